"""The rendered Deployment's probes and ports are true of the real service.

The service is started the way the container starts it (`bentoml serve` of deploykit's service
with the Deployment's environment), bound to 127.0.0.1 on the port the Deployment declares;
every probe, the Prometheus scrape target and each named port is then read from the rendered
Deployment and requested from the running server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploykit.deploy import validate
from deploykit.serve.launch import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("kubectl")  # tests/outside_tools.py: fail in CI, else skip


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def env_of(container: dict, tmp: Path) -> dict[str, str]:
    """The container's environment as the kubelet would set it on a 2-CPU-limit pod."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # resourceFieldRef limits.cpu with divisor 1: the limit rounded up
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu"
            env[item["name"]] = str(-(-int(container["resources"]["limits"]["cpu"]) // 1))
    env["BENTOML_HOME"] = str(tmp / env["BENTOML_HOME"].lstrip("/"))  # the pod's emptyDir
    return env


@pytest.fixture(scope="module")
def deployment(serve_artifact, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("probes") / "overlay"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--image", "dk:test",
                           "--artifact", str(serve_artifact), "--port", str(free_port()),
                           "--cpu", "1", "--memory", "1Gi", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = validate.kustomize_build(out)
    assert validate.validate_documents(docs) == []
    return next(d for d in docs if d["kind"] == "Deployment")


@pytest.fixture(scope="module")
def pod(deployment, serve_artifact, tmp_path_factory):
    """The service started as the container starts it; stopped by its pid."""
    tmp = tmp_path_factory.mktemp("pod")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:3] == ["serve", "--host", "0.0.0.0"]
    port = args[args.index("--port") + 1]
    env = {**os.environ, **env_of(container, tmp), "DEPLOYKIT_ARTIFACT": str(serve_artifact)}
    # The image's entrypoint runs `bentoml serve <args> $BENTO_PATH`; here the service is the
    # checkout's, and the address is loopback instead of every interface.
    cmd = [sys.executable, "-m", "bentoml", "serve", "deploykit.serve.service:Classifier",
           "--host", "127.0.0.1", "--port", port, "--working-dir", str(ROOT)]
    log = tmp / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield {"proc": proc, "log": log, "container": container}
    finally:
        stop_process_group(proc)


def _port(container: dict, port) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def _wait_for_startup(pod) -> None:
    """Poll the startupProbe exactly as the kubelet would, within its own budget."""
    container, proc = pod["container"], pod["proc"]
    probe = container["startupProbe"]
    url = f"http://127.0.0.1:{_port(container, probe['httpGet']['port'])}{probe['httpGet']['path']}"
    deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}:\n{pod['log'].read_text()[-3000:]}")
        try:
            if get(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"startupProbe {url} never succeeded:\n{pod['log'].read_text()[-3000:]}")


def test_probes_and_ports_answer_on_the_running_service(pod, deployment):
    _wait_for_startup(pod)
    container = pod["container"]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[name]["httpGet"]
        url = f"http://127.0.0.1:{_port(container, probe['port'])}{probe['path']}"
        assert get(url) == 200, (name, url)
    # Every declared container port is served.
    for port in container["ports"]:
        assert get(f"http://127.0.0.1:{port['containerPort']}/livez") == 200
    # The Prometheus scrape target the pod annotations announce.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    scrape = f"http://127.0.0.1:{annotations['prometheus.io/port']}{annotations['prometheus.io/path']}"
    with urllib.request.urlopen(scrape, timeout=10) as resp:
        assert resp.status == 200 and b"# TYPE" in resp.read()
    # The settings reached the service: the served model is the one the Deployment names.
    model = annotations["deploykit.io/model"]
    assert get(f"http://127.0.0.1:{_port(container, 'http')}/v2/models/{model}/ready") == 200

"""Serving images built, run and checked exactly as the README's container commands make them.

The README's container block (read by .ci/readme_commands.py) runs as written, with only its
first line's values changed: once on a classification artifact (under CI the demo's INT8 MiniLM,
``DEPLOYKIT_IMAGES_ARTIFACT``; else the tiny test artifact) and once on a tiny generation
artifact. It builds the offline base (cached), builds the image with ``deploykit containerize
--backend buildah``, renders the overlay pinned to the printed digest and starts the image with
rootful podman, read-only, as a non-root user, without capabilities, published on 127.0.0.1.
The tests then compare what each container answers with the same artifact served on the host,
read the Deployment's probes, port and restrictions from the rendered overlay and check them on
the running container, load the OCI archive the build wrote into a clean store and run it, and
feed ``deploykit containerize`` bad input. Outside tools follow tests/outside_tools.py (root,
buildah, podman, runc, debootstrap, curl, kubectl).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from deploykit.deploy import validate
from deploykit.serve.launch import free_port
from test_serve import http, post_json, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARTIFACT_ENV = "DEPLOYKIT_IMAGES_ARTIFACT"
# Everything but the model: a 73 MB INT8 MiniLM (the full demo's) must fit in 350 MB.
NON_MODEL_BUDGET = 277e6
TEXTS = ["I love this new phone, the camera is amazing!", "Worst service ever.", "ok",
         "The meeting has been moved to 3pm on Thursday."]
PROMPT = "translate: red cat blue dog ="
pytestmark = pytest.mark.slow


def _readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RC = _readme_commands()


def run_line() -> list[str]:
    """The README's `podman ... run ...` command, split into words."""
    line = next(l for l in RC.container_lines(README) if l.startswith("podman "))
    return shlex.split(line)


PODMAN = run_line()[:run_line().index("run")]  # podman and its global flags, as the README has them


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


def run_flags() -> dict[str, list[str]]:
    """The README's `podman run` options (name -> values), its image word and its arguments."""
    words = run_line()[len(PODMAN) + 1:]
    flags: dict[str, list[str]] = {}
    i = 0
    while words[i].startswith("-"):
        if words[i] in ("-d", "--read-only"):
            flags.setdefault(words[i], [])
            i += 1
        else:
            flags.setdefault(words[i], []).append(words[i + 1])
            i += 2
    flags["IMAGE"], flags["ARGS"] = [words[i]], words[i + 1:]
    return flags


@dataclass
class Image:
    artifact: Path
    image: str
    name: str
    url: str
    overlay: Path
    archive: Path
    digest: str

    def deployment(self) -> dict:
        docs = validate.kustomize_build(self.overlay)
        return next(d for d in docs if d["kind"] == "Deployment")


def block_env(tmp: Path) -> dict[str, str]:
    """The block's environment: this interpreter's deploykit first on PATH, a private BentoML
    store, the base image cache CI keeps."""
    cache = os.environ.get("DEPLOYKIT_BASE_CACHE") or str(Path.home() / ".cache" / "deploykit")
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "DEPLOYKIT_BASE_CACHE": cache}


def build_and_run(artifact: Path, image: str, name: str, tmp: Path) -> Image:
    """Run the README's container block on ``artifact``; the container is left running."""
    port = free_port()
    script = RC.container_script(README, artifact=str(artifact), image=image, name=name, port=str(port))
    start = time.monotonic()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=block_env(tmp),
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        logs = podman("logs", name, check=False)
        pytest.fail(f"the README's container block failed on {artifact} ({proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}\ncontainer log:\n{(logs.stdout + logs.stderr)[-3000:]}")
    print(f"{image}: README block in {time.monotonic() - start:.0f} s")
    digest_file = Path(f"{artifact}.oci.tar.digest")
    return Image(artifact, image, name, f"http://127.0.0.1:{port}", Path(f"{artifact}.k8s"),
                 Path(f"{artifact}.oci.tar"), digest_file.read_text().strip())


@contextlib.contextmanager
def running(artifact: Path, task: str, tmp: Path) -> Iterator[Image]:
    """The README block's image and container, both removed afterwards (also on failure)."""
    token = secrets.token_hex(4)
    image, name = f"localhost/deploykit-test-{task}:{token}", f"deploykit-test-{task}-{token}"
    try:
        yield build_and_run(artifact, image, name, tmp)
    finally:
        # --time 2: the graceful stop is tested elsewhere (tests/test_overload.py)
        podman("rm", "-f", "--time", "2", name, check=False)
        podman("rmi", "-f", image, check=False)


@pytest.fixture(scope="module")
def engines(kubectl):
    from outside_tools import base_image, container_tools

    container_tools()
    return base_image()


@pytest.fixture(scope="module")
def classification_artifact(serve_artifact, tmp_path_factory) -> Path:
    """The demo's artifact under CI (.ci/run sets it), else a copy of the tiny test artifact
    (the block writes its archive and overlay next to the artifact)."""
    import shutil

    if os.environ.get(ARTIFACT_ENV):
        return Path(os.environ[ARTIFACT_ENV]).resolve()
    copy = tmp_path_factory.mktemp("cls") / "artifact"
    shutil.copytree(serve_artifact, copy)
    return copy


@pytest.fixture(scope="module")
def generation_artifact(generation_artifacts, tmp_path_factory) -> Path:
    import shutil

    copy = tmp_path_factory.mktemp("gen") / "artifact"
    shutil.copytree(generation_artifacts["llama"][1], copy)
    return copy


@pytest.fixture(scope="module")
def classification_image(engines, classification_artifact, tmp_path_factory):
    with running(classification_artifact, "classification", tmp_path_factory.mktemp("cls-block")) as built:
        yield built


@pytest.fixture(scope="module")
def generation_image(engines, generation_artifact, tmp_path_factory):
    with running(generation_artifact, "generation", tmp_path_factory.mktemp("gen-block")) as built:
        yield built


def host_server(artifact: Path, folder: Path):
    """The same artifact served on this machine (`deploykit serve`, its default variant, and the
    default threads, as in the container)."""
    return start_server(None, folder, argv=[sys.executable, "-m", "deploykit", "serve", str(artifact)])


@pytest.fixture(scope="module")
def classification_host(classification_artifact, tmp_path_factory):
    proc, url = host_server(classification_artifact, tmp_path_factory.mktemp("cls-host"))
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def generation_host(generation_artifact, tmp_path_factory):
    proc, url = host_server(generation_artifact, tmp_path_factory.mktemp("gen-host"))
    yield url
    stop_server(proc)


@pytest.fixture(params=["classification", "generation"])
def any_image(request) -> Image:
    return request.getfixturevalue(f"{request.param}_image")


def test_container_classifies_as_the_host_serves(classification_image, classification_host):
    from deploykit.manifest import Manifest

    url = classification_image.url
    assert http(url + "/readyz")[0] == 200
    status, inside = post_json(url + "/classify", {"texts": TEXTS})
    assert status == 200
    outside = post_json(classification_host + "/classify", {"texts": TEXTS})[1]
    assert [r["label"] for r in inside] == [r["label"] for r in outside]
    assert [r["score"] for r in inside] == pytest.approx([r["score"] for r in outside], abs=1e-5)
    name = Manifest.read(classification_image.artifact).name
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    status, v2 = post_json(f"{url}/v2/models/{name}/infer", body)
    assert status == 200
    labels = next(o["data"] for o in v2["outputs"] if o["name"] == "LABEL")
    assert labels == [r["label"] for r in outside]


def test_container_generates_the_host_tokens(generation_image, generation_host):
    url = generation_image.url
    assert http(url + "/readyz")[0] == 200
    request = {"prompt": PROMPT, "max_new_tokens": 8}
    status, inside = post_json(url + "/generate", request)
    assert status == 200
    outside = post_json(generation_host + "/generate", request)[1]
    assert {k: inside[k] for k in ("text", "finish_reason", "usage")} == \
        {k: outside[k] for k in ("text", "finish_reason", "usage")}
    request = {"model": inside["model"], "prompt": PROMPT, "max_tokens": 8}
    status, inside = post_json(url + "/v1/completions", request)
    assert status == 200
    outside = post_json(generation_host + "/v1/completions", request)[1]
    assert inside["choices"][0]["text"] == outside["choices"][0]["text"]
    assert inside["usage"] == outside["usage"]


def test_container_runs_as_the_deployment_requires(any_image):
    """The rendered Deployment's restrictions, port, args and probes hold for the container."""
    deployment = any_image.deployment()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = {**pod["securityContext"], **container["securityContext"]}
    flags = run_flags()
    # The README's podman flags are the Deployment's restrictions.
    assert flags["--user"] == [f"{security['runAsUser']}:{security['runAsGroup']}"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] and "--read-only" in flags
    assert security["capabilities"]["drop"] == ["ALL"] and flags["--cap-drop"] == ["ALL"]
    assert "add" not in security["capabilities"] and "--cap-add" not in flags
    assert security["allowPrivilegeEscalation"] is False
    assert flags["--security-opt"] == ["no-new-privileges"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    assert {t.split(":", 1)[0] for t in flags["--tmpfs"]} == writable
    assert flags["ARGS"] == container["args"]
    # The Deployment's port is the one the container serves on (the published one's target).
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    published = flags["-p"][0].rsplit(":", 1)[1]
    assert str(ports["http"]) == published
    # ... and every probe answers there.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert ports[get["port"]] == ports["http"]
        assert http(any_image.url + get["path"])[0] == 200, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == published
    assert http(any_image.url + annotations["prometheus.io/path"])[0] == 200
    # The running process: the user, no capabilities at all, the read-only root.
    status = podman("exec", any_image.name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split()[0] == str(security["runAsUser"])
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    inspect = json.loads(podman("inspect", any_image.name).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/home/bentoml/bento/x", "/app/x", "/etc/x", "/x"):
        proc = podman("exec", any_image.name, "sh", "-c", f"echo x > {path}", check=False)
        assert proc.returncode != 0 and "Read-only file system" in proc.stderr, path
    for path in writable:
        assert podman("exec", any_image.name, "sh", "-c", f"echo x > {path}/x && rm {path}/x",
                      check=False).returncode == 0, path


def test_image_is_slim_and_pinned(any_image):
    """Nothing serving does not use; the overlay is pinned to the digest the build printed."""
    from deploykit.deploy import containerize

    size = containerize.image_size("podman", any_image.image)
    packed = json.loads((any_image.artifact / "manifest.json").read_text())
    served = packed["variants"][packed["default_variant"]]["bytes"]
    print(f"{any_image.image}: {size / 1e6:.0f} MB, model {served / 1e6:.1f} MB")
    assert size - served <= NON_MODEL_BUDGET, f"{size / 1e6:.0f} MB"
    root = Path(podman("image", "mount", any_image.image).stdout.strip())
    try:
        site = next(root.glob("app/.venv/lib/python3*/site-packages"))
        for gone in ("usr/local/bin/uv", "root/.cache", "usr/bin/perl", "usr/bin/gcc", "usr/bin/git"):
            assert not (root / gone).exists(), gone
        assert not list(site.glob("onnxruntime/capi/libonnxruntime.so*"))
        assert not list(site.glob("*/tests")) and not list(site.glob("pip"))
        names = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
        assert not names & {"torch", "transformers", "datasets", "optimum", "pip", "hf_xet"}
        assert {"onnxruntime", "tokenizers", "numpy", "bentoml"} <= names
    finally:
        podman("image", "unmount", any_image.image, check=False)
    overlay = yaml.safe_load((any_image.overlay / "kustomization.yaml").read_text())
    name = any_image.image.rsplit(":", 1)[0]
    assert {"newName": name, "digest": any_image.digest} in \
        [{k: i[k] for k in ("newName", "digest") if k in i} for i in overlay["images"]]
    assert any_image.digest.startswith("sha256:")


def test_oci_archive_round_trip(classification_image):
    """The archive the build wrote restores the image in a store that no longer has it, and it
    runs; on a writable root it still writes nothing outside /tmp."""
    image = classification_image
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image.image).stdout.strip()
    podman("rm", "-f", "--time", "2", image.name)
    podman("rmi", image.image)
    assert podman("image", "exists", image.image, check=False).returncode == 1
    loaded = podman("load", "-i", str(image.archive)).stdout
    assert image.image in loaded
    assert podman("image", "inspect", "--format", "{{.Id}}", image.image).stdout.strip() == image_id
    flags = run_flags()
    port = free_port()
    name = image.name + "-loaded"
    podman("run", "-d", "--name", name, "--tmpfs", flags["--tmpfs"][0], "--cap-drop", "ALL",
           "--user", flags["--user"][0], *[f"--ulimit={u}" for u in flags["--ulimit"]],
           "-p", f"127.0.0.1:{port}:{flags['-p'][0].rsplit(':', 1)[1]}", image.image, *flags["ARGS"])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http(url + "/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert post_json(url + "/classify", {"texts": TEXTS[:1]})[0] == 200
        assert http(url + "/metrics")[0] == 200
        # Podman itself writes /etc/hosts, /etc/hostname and /etc/resolv.conf into /etc.
        changed = [l for l in podman("diff", name).stdout.splitlines() if l.split()[-1] != "/etc"]
        assert changed == [], changed
    finally:
        podman("rm", "-f", "--time", "2", name, check=False)


# --- bad input: exit 2 (4 for a damaged artifact) with the reason, and no image left -----------

def containerize(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", "containerize", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def store() -> tuple[set[str], set[str]]:
    """The image names and the working containers in the store."""
    names = set(podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
    containers = set(subprocess.run(["buildah", "containers", "--quiet"], capture_output=True,
                                    text=True).stdout.split())
    return names, containers


@pytest.fixture(scope="module")
def empty_base(engines):
    """A base image with nothing in it: a build from it fails at its first RUN."""
    name = f"localhost/deploykit-test-empty:{secrets.token_hex(4)}"
    ctr = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["buildah", "commit", "--rm", "--quiet", ctr, name], capture_output=True, check=True)
    yield name
    podman("rmi", "-f", name, check=False)


def test_bad_input_exits_with_the_reason_and_leaves_no_image(engines, empty_base, serve_artifact, tmp_path):
    import shutil

    env = block_env(tmp_path)
    common = ["--backend", "buildah", "--base-image", engines]
    before = store()
    tag = f"localhost/deploykit-test-bad:{secrets.token_hex(4)}"
    proc = containerize(str(serve_artifact), "--tag", "Deploykit/UPPER:1", *common, env=env)
    assert proc.returncode == 2 and "is not a valid image reference" in proc.stderr
    proc = containerize(str(serve_artifact), "--tag", tag, "--backend", "buildah",
                        "--base-image", "localhost/deploykit-no-such-base:0", env=env)
    assert proc.returncode == 2 and "localhost/deploykit-no-such-base:0" in proc.stderr
    assert "k8s/offline/bookworm-python.sh" in proc.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(serve_artifact, damaged)
    model = sorted(damaged.glob("*.onnx"))[0]
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    proc = containerize(str(damaged), "--tag", tag, *common, env=env)
    assert proc.returncode == 4 and model.name in proc.stderr  # an integrity failure (DESIGN.md)
    # A build that fails half-way (the base has no shell) tags nothing and leaves no container.
    proc = containerize(str(serve_artifact), "--tag", tag, "--backend", "buildah",
                        "--base-image", empty_base, env=env)
    assert proc.returncode == 1 and "failed to build" in proc.stderr
    assert store() == before

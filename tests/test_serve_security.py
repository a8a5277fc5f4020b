"""API keys and TLS on the real service (docs/deployment.md#api-keys-and-tls).

Servers are `deploykit serve` on free 127.0.0.1 ports; the clients are the real ones: curl,
tritonclient, openai, `deploykit bench online`, schemathesis. The TLS certificate is made in the
test with openssl (tests/outside_tools.py: CI installs it from Debian)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from deploykit.serve.launch import free_port, stop_process_group
from fuzz_bodies import schemathesis_no_5xx
from test_serve import ROOT, http, start_server, stop_server

KEYS = ["k-first-7f3a9c", "k-second-b41e20"]  # two, as during a rotation
INFER = "/v2/models/classifier/infer"
V2_BODY = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}).encode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def keyed(serve_artifact, tmp_path_factory):
    """A classification server whose keys come from DEPLOYKIT_API_KEYS."""
    folder = tmp_path_factory.mktemp("keyed")
    proc, url = start_server(serve_artifact, folder, env={"DEPLOYKIT_API_KEYS": ",".join(KEYS)})
    yield url, folder / "server.log"
    stop_server(proc)


def curl(url: str, *args: str) -> tuple[int, str]:
    from outside_tools import require_binary

    out = subprocess.run([require_binary("curl"), "-s", "-o", "-", "-w", "\n%{http_code}", *args, url],
                         capture_output=True, text=True, timeout=60)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def test_curl_needs_a_key_on_every_route_but_the_probes(keyed):
    url, _ = keyed
    for path, data in (("/classify", '{"texts": ["great"]}'), (INFER, V2_BODY.decode())):
        status, body = curl(url + path, "-d", data)
        assert status == 401 and "API key" in json.loads(body)["error"], (path, body)
        assert curl(url + path, "-d", data, "-H", "Authorization: Bearer wrong-key")[0] == 401
        for key in KEYS:  # either key of a rotation
            assert curl(url + path, "-d", data, "-H", f"Authorization: Bearer {key}")[0] == 200
        assert curl(url + path, "-d", data, "-H", f"X-API-Key: {KEYS[0]}")[0] == 200
    for path in ("/v2", "/docs.json", "/schema.json", "/v2/models/classifier", "/"):
        assert curl(url + path)[0] == 401, path
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert curl(url + path)[0] == 200, path
    status, _, headers = http(url + "/classify", b'{"texts": ["x"]}')
    assert status == 401 and headers.get("www-authenticate") == "Bearer"


def test_tritonclient_and_bench_online_pass_a_key(keyed, tmp_path):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    url, _ = keyed
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_server_live()  # the probes stay open
    text = httpclient.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array(["great", "awful"], dtype=object))
    result = client.infer("classifier", [text], headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert result.as_numpy("SCORES").shape[0] == 2
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("classifier", [text])
    args = [sys.executable, "-m", "deploykit", "bench", "online", "--url", url, "--concurrency", "2",
            "--duration", "1", "--warmup", "0", "--samples", "20", "--single-requests", "0"]
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYKIT_API_KEY"}
    refused = subprocess.run([*args, "--out", str(tmp_path / "no-key")], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=300)
    assert refused.returncode == 2 and "401" in refused.stderr, refused.stderr[-2000:]
    done = subprocess.run([*args, "--out", str(tmp_path / "key")], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "DEPLOYKIT_API_KEY": KEYS[0]}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    level = json.loads((tmp_path / "key" / "results.json").read_text())["levels"][-1]
    assert level["ok"] > 0 and not level["errors"]
    assert KEYS[0] not in (tmp_path / "key" / "results.json").read_text()


def test_schemathesis_finds_no_5xx_with_keys_on(keyed):
    url, log = keyed
    seen = schemathesis_no_5xx(url, max_examples=5, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert len(seen) > 50 and {status for *_, status in seen} & {200, 400}
    text = log.read_text()
    assert not any(key in text for key in KEYS) and "Traceback" not in text  # keys are never logged


def test_openai_client_passes_its_key_and_gets_openai_shaped_401s(generation_artifacts, tmp_path):
    openai = pytest.importorskip("openai")
    _, artifact = generation_artifacts["llama"]
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated weekly\n{KEYS[0]}\n\n{KEYS[1]}\n")
    proc, url = start_server(artifact, tmp_path, "--api-keys-file", str(keys), "--max-new-tokens", "4")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS[1])
        assert [m.id for m in client.models.list()] == ["tiny-llama"]
        answer = client.completions.create(model="tiny-llama", prompt="translate: red cat =", max_tokens=2)
        assert answer.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError) as info:
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert info.value.body["type"] == "authentication_error" and info.value.body["code"] == "invalid_api_key"
        status, body, _ = http(url + "/generate", b'{"prompt": "x"}')
        assert status == 401 and isinstance(json.loads(body)["error"], str)  # /generate's own shape
    finally:
        stop_server(proc)
    assert not any(key in (tmp_path / "server.log").read_text() for key in KEYS)


@pytest.mark.parametrize("env, extra, words", [
    ({"DEPLOYKIT_API_KEYS": " , "}, [], "holds no key"),
    ({}, ["--api-keys-file", "/nonexistent/keys"], "cannot be read"),
    ({}, ["--ssl-certfile", __file__], "--ssl-keyfile"),
    ({}, ["--ssl-certfile", __file__, "--ssl-keyfile", __file__], "do not load as a TLS pair"),
])
def test_serve_refuses_to_start_without_working_auth_or_tls(serve_artifact, tmp_path, env, extra, words):
    proc = subprocess.run([sys.executable, "-m", "deploykit", "serve", str(serve_artifact), "--port",
                           str(free_port()), *extra], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "BENTOML_HOME": str(tmp_path), **env})
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with openssl."""
    from outside_tools import require_binary

    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_with_a_certificate_made_in_the_test(serve_artifact, tmp_path):
    cert, key = make_certificate(tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(serve_artifact), "--port", str(port),
                                 "--threads", "1", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                                 "--protect-metrics"],
                                cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"),
                                               "DEPLOYKIT_API_KEYS": KEYS[0]},
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/readyz", context=context, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.25)
        request = urllib.request.Request(url + "/classify", data=b'{"texts": ["great"]}', headers=bearer(KEYS[0]))
        with urllib.request.urlopen(request, context=context, timeout=30) as resp:
            assert resp.status == 200 and len(json.loads(resp.read())) == 1
        # --protect-metrics: /metrics needs the key too (the probes never do).
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "/metrics", context=context, timeout=30)
        assert info.value.code == 401
        scrape = urllib.request.Request(url + "/metrics", headers=bearer(KEYS[0]))
        with urllib.request.urlopen(scrape, context=context, timeout=30) as resp:
            assert resp.status == 200 and b"deploykit_inflight_requests" in resp.read()
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # a client not trusting it is refused
            urllib.request.urlopen(url + "/readyz", context=ssl.create_default_context(), timeout=5)
    finally:
        stop_process_group(proc)

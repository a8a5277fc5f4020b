"""The real service: `deploykit serve` in a subprocess on a free 127.0.0.1 port, called with
plain HTTP, BentoML's SyncHTTPClient and tritonclient.http."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deploykit.runtime import Runtime
from deploykit.serve.launch import free_port, stop_process_group

ROOT = Path(__file__).parents[1]
MAX_TEXTS, MAX_QUEUE, MAX_BODY = 200, 150, 64 * 1024
# The fused fp32 variant: its scores do not depend on batch mates (dynamic INT8's do, slightly,
# because it quantizes activations per batch), so batched == one-at-a-time holds exactly.
VARIANT = "opt"
TEXTS = ["I love this", "terrible, awful day", "ok", "the road to the city " * 10, "meh", "wonderful"]


def http(url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def post_json(url: str, payload) -> tuple[int, object]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, data, _ = http(url, body, {"Content-Type": "application/json"})
    return status, json.loads(data)


def start_server(artifact: Path | None, folder: Path, *extra: str, argv: list[str] | None = None,
                 env: dict | None = None):
    """Start `deploykit serve ARTIFACT` (or ``argv``) on a free port; returns (process, base URL)
    once /readyz answers. ``argv`` gets ``--port N`` appended."""
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "BENTOML_HOME": str(folder / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           **(env or {})}
    argv = argv or [sys.executable, "-m", "deploykit", "serve", str(artifact), "--threads", "1",
                    "--variant", VARIANT, *extra]
    with open(log, "w") as fh:
        proc = subprocess.Popen([*argv, "--port", str(port)], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    # A worker that fails at start-up is restarted by bentoml forever, with the port open but
    # unanswered: bound the whole wait, and each probe.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http(url + "/readyz", timeout=2)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    pytest.fail(f"server not ready in 60 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    stop_process_group(proc)


_LOGS: dict[str, Path] = {}


def server_log(url: str) -> Path:
    """The log file of a server started by a fixture here."""
    return _LOGS[url]


@pytest.fixture(scope="session")
def server(serve_artifact, tmp_path_factory):
    """One real server (deploykit batcher) for the session, stopped by its pid."""
    folder = tmp_path_factory.mktemp("server")
    proc, url = start_server(serve_artifact, folder,
                             "--max-texts", str(MAX_TEXTS), "--max-queue", str(MAX_QUEUE),
                             "--max-body-bytes", str(MAX_BODY))
    _LOGS[url] = folder / "server.log"
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def runtime(serve_artifact):
    return Runtime(serve_artifact, VARIANT)


def metric(url: str, name: str) -> dict[str, float]:
    text = http(url + "/metrics")[1].decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(rf"^({name}\S*)\s+(\S+)$", text, re.M)}


def test_classify_over_plain_http_matches_the_runtime(server, runtime):
    status, results = post_json(server + "/classify", {"texts": TEXTS})
    assert status == 200
    expected = runtime.predict(TEXTS)
    assert [r["label"] for r in results] == [e["label"] for e in expected]
    assert [r["truncated"] for r in results] == [False, False, False, True, False, False]
    for got, want in zip(results, expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_bentoml_sync_client(server, runtime):
    import bentoml

    with bentoml.SyncHTTPClient(server) as client:
        assert client.is_ready()
        results = client.classify(texts=TEXTS[:3])
    assert [r["label"] for r in results] == [r["label"] for r in runtime.predict(TEXTS[:3])]


def test_tritonclient_http_unchanged(server, runtime, serve_artifact):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("classifier")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata("classifier")
    assert meta["inputs"][0]["name"] == "TEXT" and meta["outputs"][1]["shape"] == [-1, 3]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    expected = runtime.predict(TEXTS)
    probs = np.array([[e["scores"][l] for l in runtime.labels] for e in expected], dtype=np.float32)
    for shape, binary in (([len(TEXTS)], True), ([len(TEXTS), 1], False)):
        text = httpclient.InferInput("TEXT", shape, "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object).reshape(shape), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("LABEL", binary_data=binary),
                   httpclient.InferRequestedOutput("SCORES", binary_data=binary)]
        result = client.infer("classifier", [text], outputs=outputs, request_id="42")
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("LABEL")]
        assert labels == [e["label"] for e in expected]
        np.testing.assert_allclose(result.as_numpy("SCORES"), probs, atol=1e-5)
        assert result.get_response()["id"] == "42"
    # no outputs named: all outputs, binary; and the versioned route
    text = httpclient.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array(["wonderful"], dtype=object))
    result = client.infer("classifier", [text], model_version="1")
    assert result.as_numpy("SCORES").shape == (1, 3)
    with pytest.raises(Exception, match="unknown model"):
        client.infer("nope", [text])
    client.close()


def test_64_concurrent_requests_match_one_at_a_time_and_form_batches(server):
    texts = [f"request {i}: " + "great " * (i % 9) + "day" for i in range(64)]
    before = metric(server, "deploykit_batch_size")
    alone = [post_json(server + "/classify", {"texts": [t]})[1][0] for t in texts]
    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(lambda t: post_json(server + "/classify", {"texts": [t]}), texts))
    assert all(status == 200 for status, _ in together)
    for (_, [got]), want in zip(together, alone):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    after = metric(server, "deploykit_batch_size")
    calls = after["deploykit_batch_size_count"] - before["deploykit_batch_size_count"]
    singles = after['deploykit_batch_size_bucket{le="1.0"}'] - before['deploykit_batch_size_bucket{le="1.0"}']
    assert calls - singles > 0, "no batch larger than one text was formed"
    assert calls < 128  # 64 alone + fewer than 64 calls for the concurrent ones


BAD_CLASSIFY = [
    ({"text": ["a"]}, "texts"), ({"texts": "a"}, "texts"), ({"texts": []}, "texts"),
    ({"texts": ["a", 3]}, "texts"), ({"texts": ["ok", ""]}, "texts"), ({"texts": ["  "]}, "texts"),
    ({"texts": ["a"] * (MAX_TEXTS + 1)}, "texts"), (b'{"texts": ["a"', "JSON"),
    (b'{"texts": ["\xff\xfe"]}', "JSON"), (b"[1, 2]", "validation"),
]


@pytest.mark.parametrize("payload,word", BAD_CLASSIFY)
def test_bad_classify_input_is_a_400_json_error(server, payload, word):
    status, body = post_json(server + "/classify", payload)
    assert status == 400, body
    assert word.lower() in json.dumps(body).lower()


def test_bad_v2_inputs_are_4xx_json_errors(server):
    def infer(model, payload, headers=None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, data, _ = http(f"{server}/v2/models/{model}/infer", body, headers)
        return status, json.loads(data)["error"]

    good = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    assert infer("nope", good)[0] == 404
    assert infer("classifier/versions/7", good)[0] == 404
    for tensor, message in (({"datatype": "INT64"}, "datatype"), ({"shape": [1, 2]}, "shape"),
                            ({"shape": [2]}, "elements"), ({"data": [5]}, "strings"),
                            ({"name": "X"}, "unknown input")):
        payload = {"inputs": [{**good["inputs"][0], **tensor}]}
        status, error = infer("classifier", payload)
        assert status == 400 and message in error
    assert infer("classifier", b"{oops")[0] == 400
    status, error = infer("classifier", b'{"inputs": []}xx', {"Inference-Header-Content-Length": "14"})
    assert status == 400 and "exactly one input" in error


def test_body_over_the_limit_is_413(server):
    status, body = post_json(server + "/classify", {"texts": ["word " * 100] * 150})
    assert status == 413 and "DEPLOYKIT_MAX_BODY_BYTES" in body["error"]
    status, data, _ = http(server + "/v2/models/classifier/infer", b"x" * (MAX_BODY + 1))
    assert status == 413


def test_full_queue_is_503_and_counted(server):
    key = 'deploykit_rejected_total{reason="queue_full"}'
    before = metric(server, "deploykit_rejected_total").get(key, 0)
    status, body, headers = http(server + "/classify", json.dumps({"texts": ["a"] * (MAX_QUEUE + 1)}).encode())
    assert status == 503 and "queue is full" in json.loads(body)["error"]
    assert int(headers["retry-after"]) >= 1
    assert metric(server, "deploykit_rejected_total")[key] == before + 1


def test_health_and_metrics_routes_and_still_serving(server):
    for route in ("/readyz", "/livez", "/v2/health/live", "/v2/health/ready"):
        assert http(server + route)[0] == 200
    names = http(server + "/metrics")[1].decode()
    for name in ("deploykit_batch_size", "deploykit_batch_tokens", "deploykit_queue_wait_seconds",
                 "deploykit_inference_seconds", "deploykit_rejected_total"):
        assert f"# TYPE {name}" in names or f"{name}_count" in names, name
    assert post_json(server + "/classify", {"texts": ["still here"]})[0] == 200


def test_served_labels_match_the_pytorch_checkpoint(server, serve_artifact):
    import tritonclient.http as httpclient
    from test_runtime import torch_reference

    _, expected = torch_reference(serve_artifact.parent / "checkpoint", TEXTS)
    assert [r["label"] for r in post_json(server + "/classify", {"texts": TEXTS})[1]] == expected
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    text = httpclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    labels = client.infer("classifier", [text]).as_numpy("LABEL")
    assert [x.decode() for x in labels] == expected
    client.close()


def test_bentoml_batcher_mode(serve_artifact, tmp_path, runtime):
    proc, url = start_server(serve_artifact, tmp_path, "--batcher", "bentoml", "--max-texts", "8")
    try:
        texts = [f"request {i}: " + "great " * (i % 5) for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda t: post_json(url + "/classify", {"texts": [t, "ok"]}), texts))
        expected = runtime.predict(texts)
        assert [r[1][0]["label"] for r in results] == [e["label"] for e in expected]
        assert all(r[0] == 200 and r[1][1]["label"] == results[0][1][1]["label"] for r in results)
        for payload in ({"texts": []}, {"texts": [""]}, {"texts": ["a"] * 9}, {"texts": [1]}):
            assert post_json(url + "/classify", payload)[0] == 400
        status, data, _ = http(url + "/v2/models/classifier/infer", json.dumps(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}).encode())
        assert status == 200 and json.loads(data)["outputs"][0]["data"] == [runtime.predict(["hi"])[0]["label"]]
    finally:
        stop_server(proc)


def test_bentomls_per_request_layers_are_off_by_default(server):
    """No access-log line, no per-path request metrics, tracing bypassed: the lean default."""
    from deploykit.config import ServiceConfig
    from deploykit.serve.service import bentoml_config

    config = bentoml_config(ServiceConfig())
    assert config["logging"]["access"]["enabled"] is False and config["metrics"]["enabled"] is False
    assert config["tracing"]["excluded_urls"] == [".*"] and "traffic" not in config
    log = Path(server_log(server)).read_text()
    for _ in range(3):
        assert post_json(server + "/classify", {"texts": ["one line each?"]})[0] == 200
    time.sleep(0.5)
    new = Path(server_log(server)).read_text()[len(log):]
    assert "path=/classify" not in new
    assert "bentoml_service_request" not in http(server + "/metrics")[1].decode()
    # The worker runs on uvloop and httptools (installed with deploykit; BentoML leaves uvicorn
    # on "auto").
    assert "on uvloop / httptools" in log


def test_access_log_metrics_and_tracing_come_back_with_their_settings(serve_artifact, tmp_path):
    proc, url = start_server(serve_artifact, tmp_path, "--access-log", "--request-metrics", "--tracing")
    try:
        for _ in range(3):
            assert post_json(url + "/classify", {"texts": ["logged"]})[0] == 200
        assert http(url + f"/v2/models/classifier/infer", json.dumps(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}).encode())[0] == 200
        time.sleep(0.5)
        page = http(url + "/metrics")[1].decode()
    finally:
        stop_server(proc)
    log = (tmp_path / "server.log").read_text()
    lines = [line for line in log.splitlines() if "path=/classify" in line]
    assert len(lines) == 3 and all(re.search(r"trace=[0-9a-f]{32}", line) and "trace=0000" not in line
                                   for line in lines)  # one line per request, with a traced span
    assert 'bentoml_service_request_total{endpoint="/classify"' in page and "deploykit_batch_size" in page

"""The real service on a text-generation artifact: `deploykit serve` in a subprocess, called with
plain HTTP, an SSE-reading HTTP client (httpx) and the official `openai` client.

The model is a random Llama big enough (hidden 256, 4 layers, 2,048 positions) that a long
generation lasts seconds, so a client can leave in the middle of one."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from deploykit.tasks.generation.runtime import Generator
from test_serve import http, metric, post_json, start_server, stop_server

VARIANT = "opt"  # start_server serves it
PROMPT = "translate: red cat blue dog ="
MESSAGES = [{"role": "system", "content": "translate"}, {"role": "user", "content": "red cat ="}]
MAX_NEW = 1900  # DEPLOYKIT_MAX_NEW_TOKENS of this server (the model has 2,048 positions)


@pytest.fixture(scope="module")
def gen_artifact(tmp_path_factory, translation_csv):
    from factories import make_lm_checkpoint

    from deploykit import export
    from deploykit.config import ExportConfig

    root = tmp_path_factory.mktemp("gen-serve")
    checkpoint = make_lm_checkpoint(root / "checkpoint", "llama", translation_csv, init=0.2,
                                    shape={"hidden": 256, "layers": 4, "positions": 2048})
    return export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"), name="tiny-chat",
                                   quantize="none", max_eval_samples=4, generation_tokens=8, int8_generation_tokens=8))


@pytest.fixture(scope="module")
def gen_server(gen_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen-server")
    proc, url = start_server(gen_artifact, folder, "--max-batch-size", "4", "--max-new-tokens", str(MAX_NEW),
                             "--max-queue", "8")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def generator(gen_artifact):
    return Generator(gen_artifact, VARIANT)


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON payloads of a server-sent event stream, up to [DONE]."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            events.append(json.loads(data))
    return events


def test_generate_answers_what_the_runtime_generates(gen_server, generator):
    expected = generator.generate([PROMPT], max_new_tokens=12)[0]
    status, body = post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 12})
    assert status == 200
    assert body["text"] == expected.text and body["model"] == "tiny-chat"
    assert body["finish_reason"] == expected.finish_reason
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                             "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    # chat messages through the model's template, and seeded sampling, reproducible
    chat = generator.generate([MESSAGES], max_new_tokens=6)[0]
    assert post_json(gen_server + "/generate", {"messages": MESSAGES, "max_new_tokens": 6})[1]["text"] == chat.text
    sampled = {"prompt": PROMPT, "max_new_tokens": 10, "temperature": 1.5, "seed": 7}
    assert post_json(gen_server + "/generate", sampled)[1]["text"] == \
        generator.generate([PROMPT], max_new_tokens=10, temperature=1.5, seed=7)[0].text


def test_generate_streams_server_sent_events(gen_server, generator):
    expected = generator.generate([PROMPT], max_new_tokens=20)[0]
    with httpx.stream("POST", gen_server + "/generate", json={"prompt": PROMPT, "max_new_tokens": 20, "stream": True},
                      timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    *chunks, last = events
    assert len(chunks) > 1 and all(e["text"] for e in chunks)
    assert "".join(e["text"] for e in chunks) == expected.text
    assert last["text"] == "" and last["finish_reason"] == expected.finish_reason
    assert last["usage"]["completion_tokens"] == expected.completion_tokens


def test_openai_clients_work_unchanged(gen_server, generator):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gen_server + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny-chat"]
    chat = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=9, temperature=0)
    expected = generator.generate([MESSAGES], max_new_tokens=9)[0]
    assert chat.choices[0].message.content == expected.text and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == expected.finish_reason
    assert chat.usage.completion_tokens == expected.completion_tokens
    stream = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=9, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens
    completion = client.completions.create(model="tiny-chat", prompt=PROMPT, max_tokens=7, temperature=0, stop=None)
    assert completion.choices[0].text == generator.generate([PROMPT], max_new_tokens=7)[0].text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)


def test_stop_strings_over_http(gen_server, generator):
    full = generator.generate([PROMPT], max_new_tokens=20)[0].text
    stop = full[4:6]
    status, body = post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 20, "stop": [stop]})
    assert status == 200 and body["text"] == full[:full.index(stop)] and body["finish_reason"] == "stop"


def _stream_until_first_event(url: str, payload: dict) -> socket.socket:
    """Send a streaming request on a raw socket and return once the first event arrived."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(payload).encode()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data: " not in received:
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    return sock


def _wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_client_that_leaves_mid_stream_frees_its_slot(gen_server):
    def gauge(name: str) -> float:
        return sum(metric(gen_server, name).values())

    tokens_before = gauge("deploykit_generated_tokens_total")
    dropped_before = metric(gen_server, "deploykit_dropped_texts_total").get(
        'deploykit_dropped_texts_total{reason="disconnected"}', 0.0)
    # 1,900 tokens (EOS ignored): seconds of work, of which the client reads one event
    sock = _stream_until_first_event(gen_server, {"prompt": PROMPT, "max_new_tokens": MAX_NEW, "stream": True,
                                                  "ignore_eos": True})
    assert _wait_for(lambda: gauge("deploykit_running_sequences") == 1)
    sock.close()
    assert _wait_for(lambda: gauge("deploykit_running_sequences") == 0)
    dropped = metric(gen_server, "deploykit_dropped_texts_total")['deploykit_dropped_texts_total{reason="disconnected"}']
    assert dropped == dropped_before + 1
    # it left long before its 1,900 tokens, and the server goes on serving
    assert gauge("deploykit_generated_tokens_total") - tokens_before < MAX_NEW
    assert post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 3})[0] == 200


def test_long_generations_never_get_short_requests_refused(gen_server):
    """Issue 30's check of generation admission: it refuses by count only (DEPLOYKIT_MAX_QUEUE
    sequences waiting for a place), never by an estimate of the work ahead, so two long
    generations (1,900 tokens each, EOS ignored: seconds of decoding) leave the batch's other
    places to short requests, which are all answered while the long ones run."""
    long_ones = [_stream_until_first_event(gen_server, {"prompt": PROMPT, "max_new_tokens": MAX_NEW, "stream": True,
                                                        "ignore_eos": True}) for _ in range(2)]
    try:
        assert _wait_for(lambda: sum(metric(gen_server, "deploykit_running_sequences").values()) == 2)
        statuses = []
        for _ in range(10):
            statuses.append(post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 3})[0])
            time.sleep(0.1)
        assert statuses == [200] * 10
        assert sum(metric(gen_server, "deploykit_running_sequences").values()) >= 2  # still decoding
    finally:
        for sock in long_ones:
            sock.close()
    assert _wait_for(lambda: sum(metric(gen_server, "deploykit_running_sequences").values()) == 0)


@pytest.mark.parametrize("payload, status, message", [
    ({"prompt": "", "max_new_tokens": 4}, 400, "prompt"),
    ({"prompt": "   "}, 400, "prompt"),
    ({"prompt": PROMPT, "max_new_tokens": 0}, 400, "max_new_tokens"),
    ({"prompt": PROMPT, "max_new_tokens": MAX_NEW + 1}, 400, "DEPLOYKIT_MAX_NEW_TOKENS"),
    ({"prompt": PROMPT, "max_new_tokens": 4, "beams": 3}, 400, "beams"),
    ({"prompt": PROMPT, "messages": MESSAGES}, 400, "exactly one"),
    ({"max_new_tokens": 4}, 400, "exactly one"),
    ({"prompt": PROMPT, "temperature": -1}, 400, "temperature"),
    ({"prompt": PROMPT, "seed": -1, "max_new_tokens": 2}, 400, "seed"),  # a 500 the 20,000-example fuzz found
    ({"messages": [{"role": "user"}]}, 400, "content"),
    ({"prompt": "red " * 2100, "max_new_tokens": 4}, 400, "context"),
    (b"{not json", 400, "validation error"),
])
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(gen_server, payload, status, message):
    got, body = post_json(gen_server + "/generate", payload)
    assert got == status and message in json.dumps(body)
    assert post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 2})[0] == 200


def test_openai_routes_refuse_what_they_do_not_support(gen_server):
    base = {"model": "tiny-chat", "prompt": PROMPT, "max_tokens": 2}
    assert post_json(gen_server + "/v1/completions", {**base, "n": 2})[0] == 400
    assert post_json(gen_server + "/v1/completions", {**base, "logprobs": 3})[0] == 400
    assert post_json(gen_server + "/v1/chat/completions", {"model": "tiny-chat", "messages": []})[0] == 400
    status, body = post_json(gen_server + "/classify", {"texts": ["x"]})
    assert status == 404 and "/generate" in body["error"]


def test_metrics_and_docs_describe_generation(gen_server):
    post_json(gen_server + "/generate", {"prompt": PROMPT, "max_new_tokens": 5})
    assert metric(gen_server, "deploykit_time_to_first_token_seconds_count")
    assert sum(metric(gen_server, "deploykit_inter_token_seconds_count").values()) > 0
    assert sum(metric(gen_server, "deploykit_generated_tokens_total").values()) >= 5
    requests = metric(gen_server, "deploykit_requests_total")
    assert requests['deploykit_requests_total{code="200",route="generate"}'] >= 1
    docs = json.loads(http(gen_server + "/docs.json")[1])
    assert {"/generate", "/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(docs["paths"])
    assert http(gen_server + "/readyz")[0] == 200


def test_bench_online_generation_mode(gen_server, translation_csv, tmp_path):
    from test_bench import deploykit

    out = tmp_path / "online"
    proc = deploykit("bench", "online", "--url", gen_server, "--protocol", "generate", "--concurrency", "1,3",
                     "--duration", "1.5", "--warmup", "0", "--new-tokens", "8", "--data", str(translation_csv),
                     "--text-column", "prompt", "--samples", "20", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [lvl["concurrency"] for lvl in results["levels"]] == [1, 3]
    for lvl in results["levels"]:
        assert lvl["ok"] >= 1 and not lvl["errors"]
        assert 0 < lvl["ttft_p50_ms"] <= lvl["ttft_p95_ms"] and lvl["itl_p50_ms"] > 0
        # every request streamed exactly 8 tokens (EOS ignored): total = 8 x requests / window
        assert lvl["tokens_per_s_total"] * lvl["window_s"] == pytest.approx(8 * lvl["ok"])
        assert lvl["tokens_per_s_per_client"] > 0
    assert "tokens/s total" in (out / "results.md").read_text()


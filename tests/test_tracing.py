"""OpenTelemetry spans of the service (deploykit/serve/tracing.py).

In process: deploykit's layer (``Front``) with a real classifier backend and an in-memory
exporter: one span tree per request, parented to the client's traceparent, and each request's
queue span as long as the queue wait the batcher reported. End to end: `deploykit serve
--tracing` exporting over OTLP/HTTP to a collector the test runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from deploykit.config import ServiceConfig
from deploykit.serve.app import Front
from deploykit.serve.tracing import JSONFormatter, Tracer
from deploykit.tasks.classification.serve import ClassificationBackend
from test_serve import start_server, stop_server


class Recording:
    """The metrics the backend reports: every queue wait, the rest ignored."""

    def __init__(self):
        self.waits = []

    def queue_wait(self, seconds):
        self.waits.append(seconds)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def traceparent(i: int) -> tuple[str, str, str]:
    trace_id, span_id = f"{i + 1:032x}", f"{i + 17:016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def call(front: Front, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One request through the ASGI layer; the client never disconnects."""
    sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b""}
    await front(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture(scope="module")
def traced(serve_artifact):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = Recording()
    backend = ClassificationBackend(str(serve_artifact), ServiceConfig(variant="opt", threads=1), metrics)
    front = Front(lambda *a: None, get_backend=lambda: backend, routes=[], max_body_bytes=1 << 20,
                  body_timeout_ms=5000, max_inflight_body_bytes=1 << 24, tracer=Tracer(provider))
    yield front, exporter, metrics
    backend.close()


def test_one_span_tree_per_request_parented_to_the_clients_trace(traced):
    front, exporter, metrics = traced
    exporter.clear()
    metrics.waits.clear()

    async def main():
        return await asyncio.gather(*(call(front, "/classify", json.dumps({"texts": [f"text {i}"] * (i + 1)}).encode(),
                                           [(b"traceparent", traceparent(i)[0].encode()),
                                            (b"content-type", b"application/json")]) for i in range(6)))

    assert [status for status, _ in asyncio.run(main())] == [200] * 6
    spans = exporter.get_finished_spans()
    queue_spans = []
    for i in range(6):
        _, trace_id, parent_id = traceparent(i)
        tree = [s for s in spans if f"{s.context.trace_id:032x}" == trace_id]
        servers = [s for s in tree if s.name == "POST /classify"]
        assert len(servers) == 1 and f"{servers[0].parent.span_id:016x}" == parent_id
        server = servers[0]
        children = [s for s in tree if s is not server]
        assert all(s.parent.span_id == server.context.span_id for s in children)
        names = sorted(s.name for s in children)
        assert names[:1] == ["batch step"] and names.count("batch step") >= 1
        assert {"tokenize", "queue", "respond"} <= set(names) and len(tree) == len(names) + 1
        for step in (s for s in children if s.name == "batch step"):
            assert step.attributes["deploykit.batch_size"] >= 1 and step.attributes["deploykit.batch_tokens"] >= 1
        assert server.attributes["http.response.status_code"] == 200
        assert all(server.start_time <= s.start_time <= s.end_time <= server.end_time for s in children)
        queue_spans.append(next(s for s in children if s.name == "queue"))
    # each queue span is the wait deploykit_queue_wait_seconds observed (to rounding)
    durations = sorted((s.end_time - s.start_time) / 1e9 for s in queue_spans)
    assert durations == pytest.approx(sorted(metrics.waits), abs=2e-6)


def test_json_log_lines_carry_the_requests_trace_id(traced):
    import logging

    front, _, _ = traced
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(JSONFormatter().format(record))
    logger = logging.getLogger("deploykit.serve")  # where the layer logs its refusals
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False  # (a logging.config call of another test's import may have disabled it)
    try:
        header, trace_id, _ = traceparent(41)
        status, _ = asyncio.run(call(front, "/classify", b'{"texts": []}', [(b"traceparent", header.encode())]))
    finally:
        logger.removeHandler(handler)
    assert status == 400
    line = json.loads(records[-1])
    assert line["trace_id"] == trace_id and "-> 400" in line["message"] and line["level"] == "INFO"


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps every ExportTraceServiceRequest it is sent."""

    received: list = []

    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        Collector.received.append((self.path, request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_spans_are_parented_to_the_clients_trace(serve_artifact, tmp_path):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    Collector.received = []
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    proc, url = start_server(serve_artifact, tmp_path, "--tracing", "--trace-sample-rate", "0", env=env)
    header, trace_id, parent_id = traceparent(7)
    try:
        request = urllib.request.Request(url + "/classify", data=b'{"texts": ["traced"]}',
                                         headers={"traceparent": header, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        # A request without a traceparent starts its own trace, which a 0 sample rate drops.
        assert urllib.request.urlopen(urllib.request.Request(url + "/classify", data=b'{"texts": ["x"]}'),
                                      timeout=30).status == 200
        spans = []
        for _ in range(100):
            spans = [s for _, r in Collector.received for rs in r.resource_spans for ss in rs.scope_spans
                     for s in ss.spans]
            if len(spans) >= 5:
                break
            threading.Event().wait(0.1)
    finally:
        stop_server(proc)
        collector.shutdown()
    assert {path for path, _ in Collector.received} == {"/v1/traces"}
    assert {s.trace_id.hex() for s in spans} == {trace_id}  # the client's sampled trace only
    server = next(s for s in spans if s.name == "POST /classify")
    assert server.parent_span_id.hex() == parent_id
    assert {s.name for s in spans} == {"POST /classify", "tokenize", "queue", "batch step", "respond"}
    assert all(s.parent_span_id == server.span_id for s in spans if s is not server)

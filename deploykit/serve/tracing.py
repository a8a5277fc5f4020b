"""OpenTelemetry spans of each request on deploykit's layer, and JSON log lines that carry them.

With ``DEPLOYKIT_TRACING`` on, every request deploykit's layer answers (``deploykit.serve.app``)
gets a server span, a child of the client's W3C ``traceparent`` (extracted here: BentoML's own
tracing middleware, which would do it, is bypassed for every URL since it adds a span per ASGI
message), with children for where the time went: ``tokenize``, ``queue`` (arrival in the batcher
to its first step: the time ``deploykit_queue_wait_seconds`` observes), one ``batch step`` per
step that computed some of its texts (attributes ``deploykit.batch_size`` and
``deploykit.batch_tokens``: the whole step's) and ``respond`` (the answer computed to its last
byte sent). The batcher only notes times on the request's ``Timeline`` (no OpenTelemetry on the
hot path); the child spans are made from it once the answer is sent, and only for sampled
traces.

The spans go to the tracer provider BentoML's own tracing settings configure (sample rate, OTLP
exporter): ``DEPLOYKIT_TRACE_SAMPLE_RATE`` sets its ``tracing.sample_rate``, and with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set its exporter is OTLP over HTTP to that endpoint (needs the
``opentelemetry-exporter-otlp-proto-http`` package: ``pip install deploykit[otlp]``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def bentoml_settings(sample_rate: float, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """BentoML's ``tracing`` settings for deploykit's spans: the sample rate, and the OTLP exporter
    when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (its traces path appended, as OTLP/HTTP defines)."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {"sample_rate": sample_rate}
    endpoint = environ.get(OTLP_ENV)
    if endpoint:
        traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or endpoint.rstrip("/") + "/v1/traces"
        config.update(exporter_type="otlp", otlp={"protocol": "http", "endpoint": traces})
    return config


@dataclass
class Timeline:
    """When the parts of one request happened (``time.perf_counter`` seconds), noted by the batcher
    and the handlers, turned into spans once the request is answered."""

    tokenize: tuple[float, float] | None = None
    queue: tuple[float, float] | None = None
    steps: list[tuple[float, float, int, int]] = field(default_factory=list)  # start, end, texts, tokens
    computed: float | None = None  # its answer is ready (the last step ended, or the last token)


class Trace:
    """One request's server span (entered while the request is handled, so log lines carry its
    ids) and its timeline."""

    def __init__(self, tracer: Any, span: Any, token: Any) -> None:
        self._tracer, self.span, self._token = tracer, span, token
        self.timeline = Timeline()
        self._offset = time.time_ns() - time.perf_counter_ns()  # perf_counter -> epoch nanoseconds

    def _ns(self, t: float) -> int:
        return int(t * 1e9) + self._offset

    def finish(self, status: int) -> None:
        """End the server span with its children (sampled traces only) and leave its context."""
        from opentelemetry import context, trace

        context.detach(self._token)
        span = self.span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            parent = trace.set_span_in_context(span)
            t = self.timeline
            children: list[tuple[str, tuple[float, float], dict[str, Any]]] = []
            if t.tokenize:
                children.append(("tokenize", t.tokenize, {}))
            if t.queue:
                children.append(("queue", t.queue, {}))
            for start, end, texts, tokens in t.steps:
                children.append(("batch step", (start, end), {"deploykit.batch_size": texts,
                                                              "deploykit.batch_tokens": tokens}))
            if t.computed is not None:
                children.append(("respond", (t.computed, time.perf_counter()), {}))
            for name, (start, end), attributes in children:
                child = self._tracer.start_span(name, context=parent, start_time=self._ns(start),
                                                attributes=attributes)
                child.end(end_time=self._ns(end))
        span.end()


class Tracer:
    """Starts each request's ``Trace``.

    Args:
        provider: An OpenTelemetry ``TracerProvider`` (default: the one BentoML's tracing settings
            configure, taken when the first request comes, in the worker).
    """

    def __init__(self, provider: Any = None) -> None:
        self._provider, self._tracer = provider, None

    def start(self, method: str, route: str, headers: Iterable[tuple[bytes, bytes]]) -> Trace:
        """The server span of a request, a child of its ``traceparent`` header, entered."""
        from opentelemetry import context, propagate, trace

        if self._tracer is None:
            provider = self._provider
            if provider is None:
                from bentoml._internal.configuration.containers import BentoMLContainer

                provider = BentoMLContainer.tracer_provider.get()
            self._tracer = provider.get_tracer("deploykit")
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in _PROPAGATED}
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(f"{method} {route}", context=parent, kind=trace.SpanKind.SERVER,
                                       attributes={"http.request.method": method, "http.route": route})
        token = context.attach(trace.set_span_in_context(span))
        return Trace(self._tracer, span, token)


_PROPAGATED = (b"traceparent", b"tracestate", b"baggage")


class JSONFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and the trace and span ids of
    the request being served (when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        try:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                entry["trace_id"] = f"{ctx.trace_id:032x}"
                entry["span_id"] = f"{ctx.span_id:016x}"
        except ImportError:  # opentelemetry comes with BentoML; tolerate its absence in a log line
            pass
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def json_logs(loggers: Iterable[str] = ("deploykit", "bentoml.access")) -> None:
    """Write these loggers' lines as JSON (``DEPLOYKIT_LOG_FORMAT=json``) to stderr, and only there."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False

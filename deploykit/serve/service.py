"""The BentoML service: ``/classify``, the KServe v2 routes, health and Prometheus metrics.

Thin on purpose (as BentoML's own examples are): the runtime is loaded once in ``__init__``,
``/classify`` is one list-in/list-out endpoint, and every knob comes from the ``DEPLOYKIT_*``
environment variables (``deploykit/serve/settings.py``). Start it with
``deploykit serve ARTIFACT`` or ``bentoml serve deploykit.serve.service:Classifier``.

Batching: by default deploykit's ``DynamicBatcher`` (one per process) serves both ``/classify``
and ``/v2/models/{name}/infer``; ``DEPLOYKIT_BATCHER=bentoml`` switches ``/classify`` to
BentoML's adaptive batching (the v2 routes keep deploykit's batcher, since BentoML's batcher
can only be reached through its own HTTP route).

Imports only numpy, onnxruntime, tokenizers, bentoml/starlette/pydantic/prometheus_client and
deploykit's runtime/serve/config/errors: never torch, transformers or datasets.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field, StringConstraints
from starlette.responses import JSONResponse

from deploykit import __version__
from deploykit.runtime import Runtime
from deploykit.serve import settings as settings_mod
from deploykit.serve.batcher import DynamicBatcher, QueueFullError
from deploykit.serve.http import BodyLimitMiddleware
from deploykit.serve.v2 import build_app

log = logging.getLogger(__name__)

# Read at import: the request schema (max texts), the body limit and the batching mode are
# part of the service's definition. The artifact itself is only needed in __init__, so
# 'bentoml build' can import this module without one.
SETTINGS = settings_mod.from_env()

Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
Texts = Annotated[list[Text], Field(min_length=1, max_length=SETTINGS.max_texts,
                                    description="Texts to classify (non-empty strings).")]


class Result(BaseModel):
    """The classification of one text."""

    label: str
    score: float
    scores: dict[str, float]
    truncated: bool


# The declared media type spares BentoML from rebuilding the output's JSON schema on every
# response just to find it (IOMixin.mime_type): 11% of the server's CPU samples under load
# in py-spy (docs/benchmarks.md).
Results = Annotated[list[Result], ContentType("application/json")]


DEFAULT_WAIT_MS = 5.0  # deploykit batcher's wait under load when DEPLOYKIT_MAX_LATENCY_MS is unset
_BACKEND: Any = None  # the loaded Classifier of this process, for the v2 routes
v2_app = build_app(lambda: _BACKEND, __version__)


class PrometheusBatchMetrics:
    """The batcher's metrics as Prometheus series named as docs/architecture.md fixes."""

    def __init__(self) -> None:
        # Imported here, not at module top: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker
        # after importing the service module, and prometheus_client reads it on import.
        import prometheus_client as prom

        self._batch_size = prom.Histogram("deploykit_batch_size", "Texts per model call",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self._batch_tokens = prom.Histogram("deploykit_batch_tokens", "Padded tokens per model call",
                                            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
        self._queue_wait = prom.Histogram("deploykit_queue_wait_seconds",
                                          "Time a request waited in the batching queue",
                                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self._inference = prom.Histogram("deploykit_inference_seconds", "Time of one model call",
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self._rejected = prom.Counter("deploykit_rejected", "Requests refused because the queue was full")

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._batch_tokens.observe(tokens)
        self._inference.observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def rejected(self) -> None:
        self._rejected.inc()


_METRICS: PrometheusBatchMetrics | None = None


def _metrics() -> PrometheusBatchMetrics:
    global _METRICS
    if _METRICS is None:  # one set per process: Prometheus refuses duplicate names
        _METRICS = PrometheusBatchMetrics()
    return _METRICS


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@bentoml.service(name="deploykit", http={"port": 3000}, traffic={"timeout": 60})
@bentoml.asgi_app(v2_app, path="/")
class Classifier:
    """Text classification with an exported deploykit artifact."""

    def __init__(self) -> None:
        global _BACKEND
        self.settings = SETTINGS
        self.runtime = Runtime(settings_mod.artifact_from_env(), self.settings.variant,
                               threads=self.settings.threads, providers=self.settings.provider_list(),
                               max_batch_tokens=self.settings.max_batch_tokens,
                               max_batch_size=self.settings.max_batch_size)
        wait_ms = self.settings.max_latency_ms
        self.batcher = DynamicBatcher(self.runtime, max_batch_size=self.settings.max_batch_size,
                                      max_batch_tokens=self.settings.max_batch_tokens,
                                      max_latency_ms=DEFAULT_WAIT_MS if wait_ms is None else wait_ms,
                                      max_queue=self.settings.max_queue, metrics=_metrics())
        _BACKEND = self
        log.info("serving %s (variant %s, labels %s) with the %s batcher", self.runtime.name,
                 self.runtime.variant, self.runtime.labels, self.settings.batcher)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the batcher's worker."""
        self.batcher.close()

    if SETTINGS.batcher == "bentoml":
        @bentoml.api(route="/classify", batchable=True, max_batch_size=SETTINGS.max_batch_size,
                     **({} if SETTINGS.max_latency_ms is None
                        else {"max_latency_ms": max(1, int(SETTINGS.max_latency_ms))}))
        def classify(self, texts: Texts) -> Results:
            """Classify texts; BentoML's adaptive batcher merges concurrent requests."""
            # BentoML concatenates the lists of concurrent requests; the runtime splits them by
            # the token budget again and keeps their order.
            return self.runtime.predict(texts)
    else:
        @bentoml.api(route="/classify")
        async def classify(self, texts: Texts) -> Results:
            """Classify texts; deploykit's dynamic batcher merges concurrent requests."""
            try:
                return await self.batcher.classify(texts)
            except QueueFullError as exc:
                return _error(str(exc), 503)


Classifier.add_asgi_middleware(BodyLimitMiddleware, max_bytes=SETTINGS.max_body_bytes)

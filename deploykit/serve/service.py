"""The BentoML service: ``/classify``, the KServe v2 routes, health and Prometheus metrics.

Thin on purpose (as BentoML's own examples are): the artifact is loaded once in ``__init__``
into the backend of its task (``BACKENDS``), and every knob comes from the ``DEPLOYKIT_*``
environment variables (``deploykit/serve/settings.py``). Start it with
``deploykit serve ARTIFACT`` or ``bentoml serve deploykit.serve.service:Classifier``; the bento,
``bentoml containerize`` and the Kubernetes manifests run it the same way.

The inference routes run on deploykit's lean layer (``deploykit.serve.app.Front``, installed
with ``add_asgi_middleware``): BentoML stays the server (process manager, uvicorn, health
checks, bento and container), but its per-request layers are off unless asked for:
``DEPLOYKIT_ACCESS_LOG`` (BentoML's access log), ``DEPLOYKIT_REQUEST_METRICS`` (its per-path
request metrics) and ``DEPLOYKIT_TRACING`` (its OpenTelemetry middleware, otherwise bypassed for
every URL); no ``traffic.timeout`` (deploykit's deadlines replace BentoML's timeout layer).

``/classify`` is still declared as a BentoML API, so ``/schema.json`` and
``bentoml.SyncHTTPClient`` know it; with the default deploykit batcher the lean layer answers
it first. ``DEPLOYKIT_BATCHER=bentoml`` hands ``/classify`` to BentoML's adaptive batching
instead (kept for comparison; the v2 routes keep deploykit's batcher).

Imports only numpy, onnxruntime, tokenizers, bentoml/pydantic/prometheus_client/orjson and
deploykit's runtime/serve/config/errors/manifest: never torch, transformers or datasets.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType
from pydantic import Field

from deploykit import __version__
from deploykit.config import ServiceConfig
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import Manifest
from deploykit.serve import lifecycle, metrics
from deploykit.serve import settings as settings_mod
from deploykit.serve.app import FRONTS, Front
from deploykit.serve.classify import ClassificationBackend, Result, Text
from deploykit.serve.generation import GenerationBackend
from deploykit.serve.routes import shared_routes

log = logging.getLogger(__name__)

# Read at import: the request schema (max texts), the body limits, the batching mode and the
# BentoML layers are part of the service's definition. The artifact itself is only needed in
# __init__, so 'bentoml build' can import this module without one.
SETTINGS = settings_mod.from_env()

# One backend class per task (the manifest's "task"); each brings its own routes.
BACKENDS: dict[str, Any] = {ClassificationBackend.task: ClassificationBackend,
                            GenerationBackend.task: GenerationBackend}

Texts = Annotated[list[Text], Field(min_length=1, max_length=SETTINGS.max_texts,
                                    description="Texts to classify (non-empty strings).")]
# The declared media type spares BentoML from rebuilding the output's JSON schema on every
# response just to find it (IOMixin.mime_type).
Results = Annotated[list[Result], ContentType("application/json")]

_BACKEND: Any = None  # the loaded backend of this process, for the lean layer


def bentoml_config(settings: ServiceConfig) -> dict[str, Any]:
    """BentoML's service configuration: the per-request layers deploykit switches off by default.

    BentoML 1.4 installs an OpenTelemetry middleware on every app, which only
    ``tracing.excluded_urls`` bypasses; ``metrics.enabled: false`` removes its per-path request
    metrics (and its ``/metrics`` route: deploykit serves its own); ``logging.access`` is its
    access log; no ``traffic.timeout`` means no timeout layer.
    """
    config: dict[str, Any] = {"name": "deploykit", "http": {"port": 3000}, "workers": settings.workers,
                              "metrics": {"enabled": settings.request_metrics},
                              "logging": {"access": {"enabled": settings.access_log}}}
    if not settings.tracing:
        config["tracing"] = {"excluded_urls": [".*"]}
    return config


@bentoml.service(**bentoml_config(SETTINGS))
class Classifier:
    """Text classification with an exported deploykit artifact."""

    def __init__(self) -> None:
        global _BACKEND
        logging.getLogger("deploykit").setLevel(logging.INFO)  # BentoML's root logger is at WARNING
        self.settings = SETTINGS
        try:
            artifact = settings_mod.artifact_from_env()
            task = Manifest.read(artifact).task
            if task not in BACKENDS:
                raise BadInputError(f"{artifact} is a {task} artifact; this service serves "
                                    f"{', '.join(BACKENDS)}")
            backend = BACKENDS[task](artifact, self.settings, metrics.get())
        except DeployKitError as exc:
            if not lifecycle.in_bentoml_worker():
                raise
            lifecycle.exit_server(str(exc), exc.exit_code)  # never returns
        self.backend = backend
        # /classify under BentoML's own batcher (a classifier only) reaches these.
        self.runtime, self.batcher = getattr(backend, "runtime", None), getattr(backend, "batcher", None)
        _BACKEND = backend
        log.info("serving %s on %s", backend.describe(), lifecycle.http_stack())
        lifecycle.drain_on_sigterm(self._begin_drain, self.settings.shutdown_timeout_ms / 1000)

    def _begin_drain(self) -> None:
        """SIGTERM: stop admitting, answer body readers, answer the queue after the bound."""
        log.info("SIGTERM: draining (queued requests get %.1f s)", self.settings.shutdown_timeout_ms / 1000)
        self.backend.drain(self.settings.shutdown_timeout_ms / 1000)
        for front in FRONTS:
            front.drain()

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz: ready once loaded, until shutdown starts (load shows as 503s, not here)."""
        return not self.backend.draining

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the batcher's worker."""
        self.backend.close()

    if SETTINGS.batcher == "bentoml":
        @bentoml.api(route="/classify", batchable=True, max_batch_size=SETTINGS.max_batch_size,
                     **({} if SETTINGS.max_latency_ms is None
                        else {"max_latency_ms": max(1, int(SETTINGS.max_latency_ms))}))
        def classify(self, texts: Texts) -> Results:
            """Classify texts; BentoML's adaptive batcher merges concurrent requests."""
            # BentoML concatenates the lists of concurrent requests; the runtime splits them by
            # the token budget again and keeps their order.
            try:
                return self.runtime.predict(texts)
            except BadInputError as exc:
                raise InvalidArgument(str(exc)) from None
    else:
        @bentoml.api(route="/classify")
        async def classify(self, texts: Texts) -> Results:
            """Classify texts (served by the lean layer first; declared for /schema.json and
            BentoML's clients)."""
            return await self.batcher.classify(texts)


Classifier.add_asgi_middleware(
    Front, get_backend=lambda: _BACKEND,
    routes=shared_routes(__version__, lambda: _BACKEND.routes() if _BACKEND is not None else []),
    max_body_bytes=SETTINGS.max_body_bytes, body_timeout_ms=SETTINGS.body_timeout_ms,
    max_inflight_body_bytes=SETTINGS.max_inflight_body_bytes)

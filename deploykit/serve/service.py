"""The BentoML service: hosts the backend of the artifact's task, health and Prometheus metrics.

Thin on purpose (as BentoML's own examples are): the artifact is loaded once in ``__init__``
into the backend of its task (the task's ``serve.load``, found through the task registry), and
every knob comes from the ``DEPLOYKIT_*`` environment variables (``deploykit/serve/settings.py``).
Start it with ``deploykit serve ARTIFACT`` or ``bentoml serve deploykit.serve.service:Service``
(``Classifier`` is the same class, the name bentos and older docs use); the bento,
``bentoml containerize`` and the Kubernetes manifests run it the same way.

The inference routes run on deploykit's lean layer (``deploykit.serve.app.Front``, installed
with ``add_asgi_middleware``): BentoML stays the server (process manager, uvicorn, health
checks, bento and container), but its per-request layers are off unless asked for:
``DEPLOYKIT_ACCESS_LOG`` (BentoML's access log), ``DEPLOYKIT_REQUEST_METRICS`` (its per-path
request metrics) and ``DEPLOYKIT_TRACING`` (its OpenTelemetry middleware, otherwise bypassed for
every URL); no ``traffic.timeout`` (deploykit's deadlines replace BentoML's timeout layer).

The service class declares the BentoML APIs every registered task asks for (its ``serve.bento_apis``:
text-classification's ``/classify``, so ``/schema.json`` and ``bentoml.SyncHTTPClient`` know it);
the lean layer answers the served task's routes first.

Imports only numpy, onnxruntime, tokenizers, bentoml/pydantic/prometheus_client/orjson and
deploykit's serving side: never torch, transformers or datasets.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

from deploykit import __version__, tasks
from deploykit.config import ServiceConfig, check_task
from deploykit.errors import DeployKitError
from deploykit.manifest import Manifest
from deploykit.serve import auth, lifecycle, metrics, tracing
from deploykit.serve import settings as settings_mod
from deploykit.serve.app import FRONTS, Front
from deploykit.serve.backend import Backend
from deploykit.serve.routes import shared_routes

log = logging.getLogger(__name__)

# Read at import: the request schemas (max texts), the body limits, the batching mode and the
# BentoML layers are part of the service's definition. The artifact itself is only needed in
# __init__, so 'bentoml build' can import this module without one.
SETTINGS = settings_mod.from_env()
# API keys and TLS, checked at import (a refusal stops the worker in __init__, before it serves).
try:
    _GUARD = auth.guard(SETTINGS)
    auth.check_tls(SETTINGS.ssl_certfile, SETTINGS.ssl_keyfile)
    _SETUP_ERROR: DeployKitError | None = None
except DeployKitError as exc:
    _GUARD, _SETUP_ERROR = None, exc

_BACKEND: Backend | None = None  # the loaded backend of this process, for the lean layer


def bentoml_config(settings: ServiceConfig) -> dict[str, Any]:
    """BentoML's service configuration: the per-request layers deploykit switches off by default.

    BentoML 1.4 installs an OpenTelemetry middleware on every app, which only
    ``tracing.excluded_urls`` bypasses; ``metrics.enabled: false`` removes its per-path request
    metrics (and its ``/metrics`` route: deploykit serves its own); ``logging.access`` is its
    access log; no ``traffic.timeout`` means no timeout layer.
    """
    config: dict[str, Any] = {"name": "deploykit", "http": {"port": 3000}, "workers": settings.workers,
                              "metrics": {"enabled": settings.request_metrics},
                              "logging": {"access": {"enabled": settings.access_log}},
                              # deploykit's layer makes the spans (deploykit.serve.tracing); BentoML's
                              # middleware would add a span per ASGI message to every request.
                              "tracing": {"excluded_urls": [".*"]}}
    if settings.tracing:
        config["tracing"].update(tracing.bentoml_settings(settings.trace_sample_rate))
    if settings.ssl_certfile and settings.ssl_keyfile:  # BentoML's own SSL settings: uvicorn serves HTTPS
        config["ssl"] = {"enabled": True, "certfile": settings.ssl_certfile, "keyfile": settings.ssl_keyfile}
    return config


def load_backend(artifact: str, settings: ServiceConfig) -> Backend:
    """The backend of the artifact's task, loaded with ``settings``.

    Raises:
        BadInputError: Not an artifact, an unknown task, a setting of another task, or what the
            task's loader refuses.
        IntegrityError: An artifact file does not match its manifest.
    """
    task = tasks.get(Manifest.read(artifact).task)
    check_task(settings, task.name, f"{artifact} is a {task.name} artifact")
    return task.part("serve").load(artifact, settings, metrics.get())


class _Host:
    """The service class's body: load the backend, drain on SIGTERM, readiness, shutdown."""

    def __init__(self) -> None:
        global _BACKEND
        logging.getLogger("deploykit").setLevel(logging.INFO)  # BentoML's root logger is at WARNING
        if SETTINGS.log_format == "json":
            tracing.json_logs()
        self.settings = SETTINGS
        try:
            if _SETUP_ERROR is not None:  # keys or certificate refused: never serve without them
                raise _SETUP_ERROR
            backend = load_backend(settings_mod.artifact_from_env(), self.settings)
        except DeployKitError as exc:
            if not lifecycle.in_bentoml_worker():
                raise
            lifecycle.exit_server(str(exc), exc.exit_code)  # never returns
        self.backend = backend
        _BACKEND = backend
        log.info("serving %s on %s%s%s", backend.describe(), lifecycle.http_stack(),
                 ", HTTPS" if SETTINGS.ssl_certfile else "", ", API keys required" if _GUARD is not None else "")
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
        """Stop the backend's worker threads."""
        self.backend.close()


def _task_apis(settings: ServiceConfig) -> dict[str, object]:
    """The BentoML APIs every registered task declares (``serve.bento_apis``), by method name.

    Raises:
        ValueError: Two tasks declare an API of the same name (a programming error).
    """
    apis: dict[str, object] = {}
    for task in tasks.all_tasks():
        if not task.has("serve"):
            continue
        for name, api in task.part("serve").bento_apis(settings).items():
            if name in apis:
                raise ValueError(f"two tasks declare the BentoML API {name!r}")
            apis[name] = api
    return apis


Service = bentoml.service(**bentoml_config(SETTINGS))(
    type("Service", (_Host,), {"__doc__": "Serves an exported deploykit artifact of any task.",
                               "__module__": __name__, **_task_apis(SETTINGS)}))
Classifier = Service  # the import path bentos (bentofile.yaml), docs and 'deploykit serve' used

Service.add_asgi_middleware(
    Front, get_backend=lambda: _BACKEND,
    routes=shared_routes(__version__, lambda: _BACKEND.routes() if _BACKEND is not None else []),
    max_body_bytes=SETTINGS.max_body_bytes, body_timeout_ms=SETTINGS.body_timeout_ms,
    max_inflight_body_bytes=SETTINGS.max_inflight_body_bytes, guard=_GUARD,
    tracer=tracing.Tracer() if SETTINGS.tracing else None)

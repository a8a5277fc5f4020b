"""The one contract between the service and a task: ``Backend``, what a loaded model offers.

Each task's folder provides, in its ``serve.py``, ``load(artifact, settings, metrics) ->
Backend`` (the model loaded once per worker), ``bento_apis(settings)`` (the BentoML APIs it
declares on the service class, e.g. ``/classify``), ``preflight(artifact, variant, settings)``
(``deploykit serve``'s check before the server starts) and ``deployment_values(manifest,
variant)`` (the settings and memory a Kubernetes Deployment of the artifact needs). The service
(``deploykit.serve.service``) hosts any task's backend: it answers the backend's ``routes()`` on
the lean layer, asks ``draining`` for readiness, and calls ``drain`` on SIGTERM and ``close`` at
shutdown.
"""

from __future__ import annotations

from typing import Any, Protocol

from deploykit.serve.app import Route


class Backend(Protocol):
    """A task's model loaded in one service process."""

    name: str        # the served model's name (the manifest's ``name``)
    draining: bool   # shutdown has begun: readiness answers 503
    metrics: Any     # where its requests are counted (``deploykit.serve.metrics``)

    def routes(self) -> list[Route]:
        """The task's routes (each with its OpenAPI operation)."""

    def describe(self) -> str:
        """One line for the start-up log: model, variant, batching."""

    def drain(self, timeout_s: float) -> None:
        """SIGTERM: refuse new requests now; answer what is queued after ``timeout_s``."""

    def close(self) -> None:
        """Stop the worker threads (BentoML's shutdown hook)."""

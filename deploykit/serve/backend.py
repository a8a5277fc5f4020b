"""The one contract between the service and a task: ``Backend``, what a loaded model offers.

Each task's folder provides, in its ``serve.py``, ``load(artifact, settings, metrics) ->
Backend`` (the model loaded once per worker), ``bento_apis(settings)`` (the BentoML APIs it
declares on the service class, e.g. ``/classify``), ``preflight(artifact, variant, settings)``
(``deploykit serve``'s check before the server starts) and ``deployment_values(manifest,
variant)`` (the settings and memory a Kubernetes Deployment of the artifact needs). The service
(``deploykit.serve.service``) hosts any task's backend: it answers the backend's ``routes()`` on
the lean layer, asks ``draining`` for readiness, and calls ``drain`` on SIGTERM and ``close`` at
shutdown.

Most tasks need no BentoML API and no Deployment settings of their own, and check an artifact by
loading their batched runtime: ``no_bento_apis``, ``no_deployment_values`` and
``runtime_preflight`` are those hooks, written once.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

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


def no_bento_apis(settings: Any) -> dict[str, Any]:
    """The ``bento_apis`` of a task with no BentoML-declared API: its routes are the lean layer's."""
    return {}


def no_deployment_values(manifest: Any, variant: str) -> dict[str, str]:
    """The ``deployment_values`` of a task that needs no settings beyond the shared ones
    (``deploykit.deploy.k8s``)."""
    return {}


def runtime_preflight(runtime_class: Callable[..., Any]) -> Callable[[str, str, Any], None]:
    """The ``preflight`` of a task served through the dynamic batcher: load the artifact as a
    worker will (its ``runtime_class``: inputs, outputs, a ``max_length`` row), so that
    ``deploykit serve`` fails before anything listens.

    Args:
        runtime_class: The task's runtime (``Runtime(artifact, variant, threads=, providers=,
            max_batch_tokens=, max_batch_size=)``).

    Returns:
        ``preflight(artifact, variant, settings)``, raising the runtime's ``BadInputError`` when the
        graph contradicts the manifest.
    """
    def preflight(artifact: str, variant: str, settings: Any) -> None:
        runtime_class(artifact, variant, threads=1, providers=settings.provider_list(),
                      max_batch_tokens=settings.max_batch_tokens, max_batch_size=settings.max_batch_size)

    return preflight

"""The routes every task's service shares, and ``/docs.json`` built from all the routes.

``GET /metrics`` (deploykit's Prometheus page), ``GET /docs.json`` (the OpenAPI document of
every route this service answers, with the real error bodies), and the task-free KServe v2
routes ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``. The OpenAPI document is put
together from each ``Route``'s own operation, so a route and its documentation live side by
side and a new task's routes are documented by adding them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from deploykit.serve import metrics
from deploykit.serve.app import Call, Reply, Route, json_reply

# The v2 infer request as /docs.json describes it (the parser in deploykit.serve.v2 is the rule).
_INFER_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {
            "binary_data_output": {"type": "boolean"},
            "timeout": {"type": "integer", "minimum": 1, "description": "Deadline in microseconds."}}},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "datatype", "shape"],
            "properties": {"name": {"type": "string", "enum": ["TEXT"]},
                           "datatype": {"type": "string", "enum": ["BYTES"]},
                           "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
                           "parameters": {"type": "object"},
                           "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "enum": ["LABEL", "SCORES"]},
                           "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
    },
}
_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string", "description": "What was wrong and what to do."},
                         "detail": {"type": "array", "items": {"type": "object"},
                                    "description": "/classify: one entry per validation error "
                                                   "(type, loc, msg)."}}}


def openapi(routes: list[Route], version: str) -> dict[str, Any]:
    """The OpenAPI 3 document of ``routes`` plus BentoML's health routes."""
    paths: dict[str, Any] = {
        "/readyz": {"get": {"summary": "Readiness (BentoML): 200 once loaded, 503 while shutting down",
                            "operationId": "readyz", "responses": {"200": {"description": "Ready."},
                                                                   "503": {"description": "Not ready."}}}},
        "/livez": {"get": {"summary": "Liveness (BentoML)", "operationId": "livez",
                           "responses": {"200": {"description": "Alive."}}}},
    }
    for route in routes:
        paths.setdefault(route.path, {}).update(route.openapi)
    return {"openapi": "3.0.3",
            "info": {"title": "deploykit", "version": version,
                     "description": "Text classification (/classify, the KServe v2 / Triton protocol) or text "
                                    "generation (/generate, the OpenAI /v1 routes), by the artifact's task. "
                                    "Every error is a JSON object with an 'error' message."},
            "paths": paths,
            "components": {"schemas": {"Error": _ERROR, "InferRequest": _INFER_REQUEST}}}


def shared_routes(version: str, task_routes: Callable[[], list[Route]]) -> list[Route]:
    """``/metrics``, ``/docs.json``, ``/v2``, ``/v2/health/live``, ``/v2/health/ready``.

    Args:
        version: deploykit's version (``GET /v2``, ``/docs.json``).
        task_routes: The served task's routes (for ``/docs.json``; empty while loading).
    """
    document: dict[str, Any] = {}

    async def metrics_page(call: Call) -> Reply:
        # Reading every worker's files is blocking I/O: off the event loop.
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        return Reply(body, content_type=content_type.encode())

    async def docs(call: Call) -> Reply:
        routes = task_routes()
        if document.get("routes") != len(routes):  # built once the task's routes are known
            document.update(routes=len(routes), body=json_reply(openapi([*routes, *shared], version)).body)
        return Reply(document["body"])

    async def server_metadata(call: Call) -> Reply:
        return json_reply({"name": "deploykit", "version": version, "extensions": ["binary_tensor_data"]})

    async def live(call: Call) -> Reply:
        return Reply(b"")

    async def ready(call: Call) -> Reply:
        backend = call.backend
        return Reply(b"", 200 if backend is not None and not backend.draining else 503)

    def op(summary: str, op_id: str, ok: str, extra: dict | None = None) -> dict[str, Any]:
        return {"get": {"summary": summary, "operationId": op_id,
                        "responses": {"200": {"description": ok}, **(extra or {})}}}

    not_ready = {"503": {"description": "Loading or shutting down."}}
    shared = [
        Route("/metrics", ("GET",), metrics_page, "metrics", needs_backend=False,
              openapi=op("Prometheus metrics (deploykit's series)", "metrics", "Prometheus text format.")),
        Route("/docs.json", ("GET",), docs, "docs", needs_backend=False,
              openapi=op("This OpenAPI document", "openapi", "OpenAPI 3 JSON.")),
        Route("/v2", ("GET",), server_metadata, "v2_metadata", needs_backend=False,
              openapi=op("v2 server metadata", "v2_server_metadata", "Name, version, extensions.")),
        Route("/v2/health/live", ("GET",), live, "v2_health", needs_backend=False,
              openapi=op("v2 liveness", "v2_live", "Alive.")),
        Route("/v2/health/ready", ("GET",), ready, "v2_health", needs_backend=False,
              openapi=op("v2 readiness", "v2_ready", "Ready.", not_ready)),
    ]
    return shared

"""token-classification on the service: its backend (the classifier's, with this task's runtime), its routes.

- ``POST /ner`` takes ``{"texts": [...], "aggregation": "simple"}`` (``aggregation`` optional: the
  manifest's default) and answers ``{"entities": [[{"entity_group", "score", "word", "start",
  "end"}, ...], ...], "model", "variant"}``: the transformers pipeline's field names (with
  ``"aggregation": "none"``, its per-token ``entity``, ``score``, ``index``, ``word``, ``start``,
  ``end``), ``word`` the text's own slice, offsets into the original text.
- The KServe v2 model routes (``/v2/models/{name}[/versions/1]``, ``.../ready``, ``.../infer``):
  input BYTES ``TEXT`` [n] or [n, 1], output BYTES ``ENTITIES`` [n], one JSON document per text;
  the request's ``parameters.aggregation`` chooses the aggregation. ``tritonclient`` works
  unchanged.

Both go through the process's one batcher (``deploykit.serve.batcher``): a text is its windows, so
the same token budget, admission by time, deadlines, 413 past ``max_request_tokens`` and 4xx rules
as ``/classify`` hold. Imports only numpy, onnxruntime, tokenizers, pydantic and deploykit's
serving side: never torch, transformers or datasets.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from deploykit.config import ServiceConfig
from deploykit.serve import backend, v2
from deploykit.serve.app import Call, HTTPError, Reply, Route, json_reply, request_timeout
from deploykit.serve.quoting import quote, shorten
from deploykit.tasks.classification.serve import ClassificationBackend, Text, model_of, model_ready
from deploykit.tasks.token_classification.head import AGGREGATIONS
from deploykit.tasks.token_classification.runtime import Runtime

OUTPUT = "ENTITIES"
# Requests whose windows are aggregated off the event loop (a big request would stall the others).
_INLINE_WINDOWS = 32
_NOT_JSON = (b"multipart/", b"application/vnd.bentoml+pickle")
Aggregation = Literal[AGGREGATIONS]  # type: ignore[valid-type]


@functools.cache
def request_model(max_texts: int) -> type[BaseModel]:
    """The ``/ner`` body: 1 to ``max_texts`` non-blank strings and an optional aggregation (one
    pydantic model validates the body and gives ``/docs.json`` its schema)."""

    class NerRequest(BaseModel):
        texts: Annotated[list[Text], Field(min_length=1, max_length=max_texts,
                                           description="Texts to tag (non-empty, not only spaces; any length).")]
        aggregation: Aggregation | None = Field(None, description="How tokens become entities (the transformers "
                                                                  "pipeline's strategies; default: the manifest's).")

    return NerRequest


class NerBackend(ClassificationBackend):
    """The loaded token classifier of one service process: the classifier's backend (batcher,
    settings, drain, close) with this task's runtime and routes."""

    runtime_class = Runtime

    def routes(self) -> list[Route]:
        return routes(self.settings)

    def describe(self) -> str:
        r = self.runtime
        return (f"{r.name} (token-classification, variant {r.variant}, labels {r.labels}, aggregation "
                f"{r.aggregation}, stride {r.stride}) with deploykit's batcher")

    async def entities(self, call: Call, texts: list[str], aggregation: str | None, timeout_us: Any = None,
                       route: str = "ner") -> list:
        """Each text's entities, through the batcher (windows of every text as its rows); ``route`` is
        the metrics' route label."""
        strategy = self.runtime.check_aggregation(aggregation)
        batcher = self.batcher
        rows, logits = await batcher.submit(texts, deadline=batcher.deadline(request_timeout(call, timeout_us)),
                                            disconnected=call.disconnected, route=route, timeline=call.timeline)
        work = functools.partial(self.runtime.entities, texts, rows, logits, strategy)
        if len(rows) <= _INLINE_WINDOWS:
            return work()
        return await asyncio.get_running_loop().run_in_executor(None, work)


def load(artifact: str, settings: ServiceConfig, metrics: Any) -> NerBackend:
    """The token classifier of one service process (the serve contract's ``load``)."""
    return NerBackend(artifact, settings, metrics)


# The serve contract's hooks a batched task shares (deploykit.serve.backend).
preflight = backend.runtime_preflight(Runtime)
deployment_values = backend.no_deployment_values
bento_apis = backend.no_bento_apis


# --- handlers ---------------------------------------------------------------------------------

async def ner(call: Call) -> Reply:
    backend: NerBackend = call.backend
    content_type = (call.header(b"content-type") or b"application/json").lower()
    if content_type.startswith(_NOT_JSON):
        raise HTTPError(415, f"/ner takes a JSON body, not {quote(content_type)}; send "
                        "Content-Type: application/json and {\"texts\": [...]}")
    model = request_model(backend.settings.max_texts)
    try:
        body = model.model_validate_json(call.body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        where = shorten(".".join(map(str, errors[0]["loc"]))) or "the body"
        raise HTTPError(400, f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} in the request body: "
                        f"{errors[0]['msg']} at {where}; send {{\"texts\": [1 to {backend.settings.max_texts} "
                        f"non-empty strings], \"aggregation\": one of {', '.join(AGGREGATIONS)} (optional)}}",
                        detail=errors) from None
    found = await backend.entities(call, body.texts, body.aggregation)
    runtime = backend.runtime
    return json_reply({"entities": found, "model": runtime.name, "variant": runtime.variant})


def metadata(name: str) -> dict[str, Any]:
    """The v2 model metadata document of a token classifier."""
    return {"name": name, "versions": [v2.VERSION], "platform": "deploykit_token_classification",
            "inputs": [{"name": v2.INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}]}


async def model_metadata(call: Call) -> Reply:
    return json_reply(metadata(model_of(call).name))


async def infer(call: Call) -> Reply:
    backend: NerBackend = model_of(call)  # type: ignore[assignment]
    header = call.header(v2.HEADER_LENGTH.lower().encode())
    try:
        req = v2.parse_infer(call.body, None if header is None else header.decode("latin-1"),
                             backend.settings.max_texts, offered=(OUTPUT,))
    except v2.ProtocolError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    aggregation = req.parameters.get("aggregation")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise HTTPError(400, f"parameter 'aggregation' is {quote(aggregation)}; choose one of {', '.join(AGGREGATIONS)}")
    found = await backend.entities(call, req.texts, aggregation, req.timeout_us, route="v2_infer")
    documents = [orjson.dumps(f) for f in found]
    entry: dict[str, Any] = {"name": OUTPUT, "datatype": "BYTES", "shape": [len(documents)]}
    head: dict[str, Any] = {"model_name": backend.name, "model_version": v2.VERSION, "outputs": [entry]}
    if req.request_id is not None:
        head["id"] = req.request_id
    if not req.outputs.get(OUTPUT, False):
        entry["data"] = [d.decode() for d in documents]
        return json_reply(head)
    blob = v2.serialize_bytes(documents)
    entry["parameters"] = {"binary_data_size": len(blob)}
    head_bytes = orjson.dumps(head)
    return Reply(head_bytes + blob, content_type=b"application/octet-stream",
                 headers=[(v2.HEADER_LENGTH.lower().encode(), str(len(head_bytes)).encode())])


# --- routes and their OpenAPI operations --------------------------------------------------------

ERROR = {"description": "A JSON {\"error\": ...}: what was wrong and what to do.",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
ENTITY = {"type": "object", "description": "An entity (aggregation none: a token, with 'entity' and 'index').",
          "properties": {"entity_group": {"type": "string"}, "entity": {"type": "string"}, "score": {"type": "number"},
                         "index": {"type": "integer"}, "word": {"type": "string"},
                         "start": {"type": "integer"}, "end": {"type": "integer"}}}


def responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    """An OpenAPI operation's responses: ``ok`` for 200, the error body for each of ``codes``."""
    return {"200": ok, **{str(code): ERROR for code in codes}}


ERRORS = (400, 404, 408, 413, 415, 503, 504)
TIMEOUT_HEADER = {"name": "X-Request-Timeout", "in": "header", "required": False,
                  "description": "This request's deadline in milliseconds (at most DEPLOYKIT_REQUEST_TIMEOUT_MS).",
                  "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}


def v2_routes(model_metadata: Any, infer: Any, summary: str, outputs: str) -> list[Route]:
    """The KServe v2 model routes of a task's handlers (metadata, readiness, infer; with and without
    ``/versions/{version}``), shared by the span tasks.

    Args:
        model_metadata: The metadata handler.
        infer: The infer handler.
        summary: The infer operation's summary (its inputs and outputs).
        outputs: What a 200 answer of infer holds.
    """
    out = []
    model_params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    for prefix, extra in (("/v2/models/{name}", []), ("/v2/models/{name}/versions/{version}", [version_param])):
        params, suffix = model_params + extra, "_versioned" if extra else ""
        out += [
            Route(prefix, ("GET",), model_metadata, "v2_metadata", openapi={"get": {
                "summary": "v2 model metadata", "operationId": "v2_model_metadata" + suffix, "parameters": params,
                "responses": responses({"description": "Inputs and outputs of the model."}, 404)}}),
            Route(prefix + "/ready", ("GET",), model_ready, "v2_health", openapi={"get": {
                "summary": "v2 model readiness", "operationId": "v2_model_ready" + suffix, "parameters": params,
                "responses": responses({"description": "Ready."}, 404, 503)}}),
            Route(prefix + "/infer", ("POST",), infer, "v2_infer", body=True, openapi={"post": {
                "summary": summary, "operationId": "v2_infer" + suffix, "parameters": [*params, TIMEOUT_HEADER],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": responses({"description": outputs}, *ERRORS)}}),
        ]
    return out


def routes(settings: ServiceConfig) -> list[Route]:
    """``/ner`` and the v2 model routes."""
    answer = {"type": "object", "properties": {
        "entities": {"type": "array", "items": {"type": "array", "items": ENTITY}},
        "model": {"type": "string"}, "variant": {"type": "string"}}}
    return [Route("/ner", ("POST",), ner, "ner", body=True, openapi={"post": {
        "summary": "Named entities of texts, with character offsets", "operationId": "ner",
        "parameters": [TIMEOUT_HEADER],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": request_model(settings.max_texts).model_json_schema()}}},
        "responses": responses({"description": "One list of entities per text, in order.",
                                "content": {"application/json": {"schema": answer}}}, *ERRORS)}}),
            *v2_routes(model_metadata, infer, "v2 inference: TEXT (BYTES [n] or [n, 1]) -> ENTITIES (BYTES [n], JSON "
                       "per text)", "ENTITIES (JSON, or binary after the JSON header with "
                       "Inference-Header-Content-Length).")]

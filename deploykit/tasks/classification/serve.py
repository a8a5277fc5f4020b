"""text-classification on the service: its backend (runtime + batcher), its routes, its BentoML API.

``POST /classify`` (deploykit's JSON API) and the KServe v2 model routes
(``/v2/models/{name}[/versions/{version}]``, ``.../ready``, ``.../infer``) are served by the same
lean layer (``deploykit.serve.app``) and the same batcher, so they answer alike. ``/classify`` is
also declared as a BentoML API (``bento_apis``), so ``/schema.json`` and ``bentoml.SyncHTTPClient``
know it, and ``DEPLOYKIT_BATCHER=bentoml`` hands it to BentoML's adaptive batching instead.
The functions the service calls are the task's serve contract (``deploykit.serve.backend``).

Imports only numpy, onnxruntime, tokenizers, bentoml/pydantic and deploykit's serving side:
never torch, transformers or datasets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from deploykit.config import ServiceConfig
from deploykit.errors import BadInputError
from deploykit.serve import backend, v2
from deploykit.serve.app import Call, HTTPError, Reply, Route, json_reply, request_timeout
from deploykit.serve.batcher import DynamicBatcher
from deploykit.serve.quoting import quote, shorten
from deploykit.tasks.classification.runtime import Runtime

log = logging.getLogger(__name__)

# The deploykit batcher's wait for company under load when DEPLOYKIT_MAX_LATENCY_MS is unset.
DEFAULT_WAIT_MS = 5.0

Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


class Result(BaseModel):
    """The classification of one text."""

    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Every label's probability.")
    truncated: bool = Field(description="Whether the text was cut at the model's max_length tokens.")


class MultiLabelResult(BaseModel):
    """The labels of one text (a multi-label model)."""

    labels: list[str] = Field(description="The labels whose probability is at or over their threshold, "
                                          "most probable first (possibly none).")
    scores: dict[str, float] = Field(description="Every label's own probability (sigmoid).")
    truncated: bool = Field(description="Whether the text was cut at the model's max_length tokens.")


def _outputs(backend: "ClassificationBackend") -> tuple[str, ...]:
    """The v2 outputs a model offers: LABEL and SCORES, LABELS and SCORES (multi-label), or SCORES
    (a relevance or similarity model)."""
    decisions = backend.runtime.decisions
    if decisions.score_head:
        return v2.SCORE_OUTPUTS
    return v2.MULTI_LABEL_OUTPUTS if decisions.multi_label else v2.OUTPUTS


def _inputs(backend: "ClassificationBackend") -> tuple[str, ...]:
    """The v2 inputs: TEXT, or TEXT and TEXT_PAIR for a pair model."""
    return v2.PAIR_INPUTS if backend.pairs else (v2.INPUT,)


class ScoreResult(BaseModel):
    """The score of one pair (a relevance or similarity model)."""

    score: float = Field(description="Relevance in [0, 1] (sigmoid), or the similarity (the logit).")
    truncated: bool = Field(description="Whether the pair was cut at the model's max_length tokens.")


@functools.lru_cache(maxsize=None)
def pairs_model(max_texts: int) -> type[BaseModel]:
    """The ``/classify`` body of a pair model: ``{"pairs": [[a, b], ...]}``."""

    class PairsRequest(BaseModel):
        pairs: Annotated[list[tuple[Text, Text]], Field(min_length=1, max_length=max_texts,
                                                        description="Pairs of non-empty texts, encoded together.")]

    return PairsRequest


@functools.lru_cache(maxsize=None)
def rerank_model(max_texts: int) -> type[BaseModel]:
    """text-embeddings-inference's ``/rerank`` body."""

    class RerankRequest(BaseModel):
        query: Text
        texts: Annotated[list[Text], Field(min_length=1, max_length=max_texts)]
        truncate: bool = False
        truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"
        raw_scores: bool = False
        return_text: bool = False

    return RerankRequest


class CohereDocument(BaseModel):
    text: Text


@functools.lru_cache(maxsize=None)
def cohere_model(max_texts: int) -> type[BaseModel]:
    """The Cohere-style ``/v1/rerank`` body (vLLM, llama.cpp, LangChain's clients)."""

    class CohereRerankRequest(BaseModel):
        model: str | None = None
        query: Text
        documents: Annotated[list[Text | CohereDocument], Field(min_length=1, max_length=max_texts)]
        top_n: Annotated[int, Field(gt=0)] | None = None
        return_documents: bool = True

    return CohereRerankRequest


@functools.lru_cache(maxsize=None)
def request_model(max_texts: int) -> type[BaseModel]:
    """The ``/classify`` body: ``{"texts": [...]}``, 1 to ``max_texts`` non-blank strings.

    One pydantic model validates the body (pydantic-core parses the JSON too: invalid UTF-8,
    lone surrogates and deep nesting are validation errors, not crashes) and gives
    ``/docs.json`` its schema, so the two cannot disagree.
    """

    class ClassifyRequest(BaseModel):
        texts: Annotated[list[Text], Field(min_length=1, max_length=max_texts,
                                           description="Texts to classify (non-empty, not only spaces).")]

    return ClassifyRequest


class ClassificationBackend:
    """The loaded classifier of one service process: runtime, batcher, settings.

    Args:
        artifact: The artifact folder.
        settings: The service settings.
        metrics: Where the batcher reports (``deploykit.serve.metrics``).

    Raises:
        BadInputError, IntegrityError: As ``Runtime`` (the artifact is refused before serving).
    """

    # The runtime it loads (another task's backend built on this one names its own).
    runtime_class: type[Runtime] = Runtime

    def __init__(self, artifact: str, settings: ServiceConfig, metrics: Any) -> None:
        self.settings = settings
        self.runtime = self.runtime_class(artifact, settings.variant, threads=settings.threads,
                               providers=settings.provider_list(), max_batch_tokens=settings.max_batch_tokens,
                               max_batch_size=settings.max_batch_size,
                               spin=settings.spins(False))  # see deploykit.session.session
        wait_ms = settings.max_latency_ms
        self.batcher = DynamicBatcher(
            self.runtime, max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
            max_latency_ms=DEFAULT_WAIT_MS if wait_ms is None else wait_ms, max_queue=settings.max_queue,
            max_queue_wait_ms=settings.max_queue_wait_ms, request_timeout_ms=settings.request_timeout_ms,
            max_request_tokens=settings.max_request_tokens, metrics=metrics)
        self.name = self.runtime.name
        self.metrics = metrics
        self.draining = False
        self.pairs = self.runtime.text_pair
        # The column /rerank ranks by: a score head's one output, or --rerank-label's class.
        self.rerank_column: int | None = None
        if self.pairs and self.runtime.decisions.score_head:
            self.rerank_column = 0
        elif self.pairs and settings.rerank_label is not None:
            if settings.rerank_label not in self.runtime.labels:
                raise BadInputError(f"--rerank-label {settings.rerank_label!r} is not among the model's labels "
                                    f"{self.runtime.labels}")
            self.rerank_column = self.runtime.labels.index(settings.rerank_label)

    def routes(self) -> list[Route]:
        """``/classify`` (unless BentoML's batcher serves it) and the v2 model routes."""
        return routes(self.settings)

    def describe(self) -> str:
        r = self.runtime
        return f"{r.name} (variant {r.variant}, labels {r.labels}) with the {self.settings.batcher} batcher"

    def drain(self, timeout_s: float) -> None:
        """Shutdown: refuse new requests now, answer what is still queued after ``timeout_s``."""
        self.draining = True
        self.batcher.drain()
        asyncio.get_running_loop().call_later(timeout_s, self.batcher.fail_queued)

    def close(self) -> None:
        self.batcher.close()


def load(artifact: str, settings: ServiceConfig, metrics: Any) -> ClassificationBackend:
    """The classifier of one service process (the serve contract's ``load``)."""
    return ClassificationBackend(artifact, settings, metrics)


# The serve contract's hooks a batched task shares (deploykit.serve.backend).
preflight = backend.runtime_preflight(Runtime)
deployment_values = backend.no_deployment_values


def bento_apis(settings: ServiceConfig) -> dict[str, Any]:
    """``/classify`` as a BentoML API of the service class: deploykit's batcher behind it (the lean
    layer answers first), or with ``batcher: bentoml`` BentoML's adaptive batcher.

    The method's types are set on it here (not written as annotations): they depend on
    ``settings`` (the most texts per request), which a module-level annotation could not see.
    """
    import bentoml
    from bentoml.exceptions import InvalidArgument
    from bentoml.validators import ContentType

    texts_type = Annotated[list[Text], Field(min_length=1, max_length=settings.max_texts,
                                             description="Texts to classify (non-empty strings).")]
    # The declared media type spares BentoML from rebuilding the output's JSON schema on every
    # response just to find it (IOMixin.mime_type).
    results_type = Annotated[list[Result | MultiLabelResult | ScoreResult], ContentType("application/json")]
    if settings.batcher == "bentoml":
        def classify(self: Any, texts: list[str]) -> list[dict[str, Any]]:
            """Classify texts; BentoML's adaptive batcher merges concurrent requests."""
            # BentoML concatenates the lists of concurrent requests; the runtime splits them by
            # the token budget again and keeps their order.
            backend: ClassificationBackend = self.backend
            try:
                return backend.runtime.predict(texts)
            except BadInputError as exc:
                raise InvalidArgument(str(exc)) from None

        classify.__annotations__ = {"texts": texts_type, "return": results_type}
        wait = {} if settings.max_latency_ms is None else {"max_latency_ms": max(1, int(settings.max_latency_ms))}
        return {"classify": bentoml.api(route="/classify", batchable=True, max_batch_size=settings.max_batch_size,
                                        **wait)(classify)}

    async def classify_batched(self: Any, texts: list[str]) -> list[dict[str, Any]]:
        """Classify texts (served by the lean layer first; declared for /schema.json and BentoML's clients)."""
        backend: ClassificationBackend = self.backend
        return await backend.batcher.classify(texts)

    classify_batched.__annotations__ = {"texts": texts_type, "return": results_type}
    classify_batched.__name__ = classify_batched.__qualname__ = "classify"
    return {"classify": bentoml.api(route="/classify")(classify_batched)}


# --- handlers ---------------------------------------------------------------------------------

# Bodies that cannot be JSON. Any other content type is read as JSON: curl -d and urllib send
# JSON labelled application/x-www-form-urlencoded by default.
_NOT_JSON = (b"multipart/", b"application/vnd.bentoml+pickle")


async def classify(call: Call) -> Reply:
    backend: ClassificationBackend = call.backend
    _json_body(call, "/classify", '{"pairs": [[a, b], ...]}' if backend.pairs else '{"texts": [...]}')
    limit = backend.settings.max_texts
    if backend.pairs:
        texts = _validated(pairs_model(limit), call.body, f"{{\"pairs\": [1 to {limit} [text, text_pair] pairs of "
                           "non-empty strings]} (this model scores pairs of texts)").pairs
    else:
        texts = _validated(request_model(limit), call.body,
                           f"{{\"texts\": [1 to {limit} non-empty strings]}}").texts
    batcher = backend.batcher
    rows, logits = await batcher.submit(texts, deadline=batcher.deadline(request_timeout(call)),
                                        disconnected=call.disconnected, route="classify",
                                        timeline=call.timeline)
    return json_reply(backend.runtime.results(logits, rows))


def _where(loc: tuple) -> str:
    return shorten(".".join(map(str, loc))) or "the body"


def _validated(model: type[BaseModel], body: bytes, send: str) -> Any:
    """The body validated by ``model`` (pydantic parses the JSON too), or a 400 naming the first
    field that is wrong and what to send."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise HTTPError(400, f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} in the request "
                        f"body: {errors[0]['msg']} at {_where(errors[0]['loc'])}; send {send}",
                        detail=errors) from None


def _json_body(call: Call, route: str, send: str) -> None:
    """Refuse a body that cannot be JSON (415)."""
    content_type = (call.header(b"content-type") or b"application/json").lower()
    if content_type.startswith(_NOT_JSON):
        raise HTTPError(415, f"{route} takes a JSON body, not {quote(content_type)}; send Content-Type: "
                        f"application/json and {send}")


def _reranker(call: Call, route: str) -> ClassificationBackend:
    """The backend of a rerank route: 404 unless the model scores pairs (and, with class heads, was
    served with --rerank-label)."""
    backend: ClassificationBackend = call.backend
    if not backend.pairs:
        raise HTTPError(404, f"{route} is served for text-pair models only; this model classifies single texts "
                        "(POST /classify)")
    if backend.rerank_column is None:
        raise HTTPError(404, f"{route} needs the class to rank by: serve this pair classifier with --rerank-label "
                        f"(one of {backend.runtime.labels})")
    return backend


async def _rank(call: Call, backend: ClassificationBackend, query: str, documents: list[str], route: str,
                right: bool = True) -> tuple[Any, Any, Any]:
    """Score (query, document) pairs through the shared batcher: (rows, ranking scores, raw logits)."""
    batcher = backend.batcher
    try:
        rows = backend.runtime.tokenize([(query, doc) for doc in documents], "right" if right else "left")
    except BadInputError as exc:
        raise HTTPError(400, str(exc)) from None
    logits = await batcher.submit_rows(rows, deadline=batcher.deadline(request_timeout(call)),
                                       disconnected=call.disconnected, route=route, timeline=call.timeline)
    column = backend.rerank_column
    return rows, backend.runtime.decisions.scores(logits)[:, column], logits[:, column]


async def rerank(call: Call) -> Reply:
    """text-embeddings-inference's ``POST /rerank``: ``{query, texts, truncate?, truncation_direction?,
    raw_scores?, return_text?}`` -> ``[{index, score, text?}]``, best first."""
    backend = _reranker(call, "/rerank")
    limit = backend.settings.max_texts
    send = f'{{"query": "...", "texts": [1 to {limit} non-empty strings]}}'
    _json_body(call, "/rerank", send)
    req = _validated(rerank_model(limit), call.body, send)
    rows, scores, raw = await _rank(call, backend, req.query, req.texts, "rerank",
                                    right=req.truncation_direction.lower() == "right")
    cut = [i for i, row in enumerate(rows) if row.truncated]
    if cut and not req.truncate:  # TEI refuses what it would have to cut unless asked to truncate
        raise HTTPError(413, f"text(s) {cut[:10]} with the query are longer than the model's "
                        f"{backend.runtime.max_length} tokens; send shorter texts or \"truncate\": true")
    values = raw if req.raw_scores else scores
    order = sorted(range(len(req.texts)), key=lambda i: -float(values[i]))
    return json_reply([{"index": i, "score": float(values[i]), **({"text": req.texts[i]} if req.return_text else {})}
                       for i in order])


async def cohere_rerank(call: Call) -> Reply:
    """The Cohere-style ``POST /v1/rerank`` (vLLM, llama.cpp, LangChain): ``{model, query, documents,
    top_n?, return_documents?}`` -> ``{"results": [{index, relevance_score, document?}], ...}``."""
    backend = _reranker(call, "/v1/rerank")
    limit = backend.settings.max_texts
    send = (f'{{"model": "{backend.name}", "query": "...", "documents": [1 to {limit} non-empty strings], '
            '"top_n": N > 0}')
    _json_body(call, "/v1/rerank", send)
    req = _validated(cohere_model(limit), call.body, send)
    documents = [d if isinstance(d, str) else d.text for d in req.documents]
    _, scores, _ = await _rank(call, backend, req.query, documents, "v1_rerank")
    order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))[:req.top_n]
    results = [{"index": i, "relevance_score": float(scores[i]),
                **({"document": {"text": documents[i]}} if req.return_documents else {})} for i in order]
    return json_reply({"model": backend.name, "results": results})


def model_of(call: Call) -> ClassificationBackend:
    """The backend a v2 model route names (404 for another model name or version)."""
    backend: ClassificationBackend = call.backend
    name, version = call.params.get("name"), call.params.get("version")
    if name != backend.name:
        raise HTTPError(404, f"unknown model {quote(name)}; this server serves {backend.name!r}")
    if version is not None and version != v2.VERSION:
        raise HTTPError(404, f"unknown version {quote(version)} of model {quote(name)}; available: {v2.VERSION}")
    return backend


async def model_metadata(call: Call) -> Reply:
    backend = model_of(call)
    return json_reply(v2.model_metadata(backend.name, len(backend.runtime.labels), outputs=_outputs(backend),
                                        inputs=_inputs(backend)))


async def model_ready(call: Call) -> Reply:
    backend = model_of(call)
    return Reply(b"", 503 if backend.draining else 200)


async def infer(call: Call) -> Reply:
    backend = model_of(call)
    header = call.header(v2.HEADER_LENGTH.lower().encode())
    try:
        req = v2.parse_infer(call.body, None if header is None else header.decode("latin-1"),
                             backend.settings.max_texts, _outputs(backend), _inputs(backend))
    except v2.ProtocolError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    batcher = backend.batcher
    _, logits = await batcher.submit(req.texts, deadline=batcher.deadline(request_timeout(call, req.timeout_us)),
                                     disconnected=call.disconnected, route="v2_infer",
                                     timeline=call.timeline)
    decisions = backend.runtime.decisions
    body, headers = v2.encode_response(backend.name, req, decisions.label_strings(logits),
                                       decisions.scores(logits), label_output=_outputs(backend)[0])
    content_type = headers.pop("Content-Type").encode()
    return Reply(body, content_type=content_type,
                 headers=[(k.lower().encode(), v.encode()) for k, v in headers.items()])


# --- routes and their OpenAPI operations --------------------------------------------------------

ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    text = {400: "Malformed request (the body, a parameter or a header); the message says what to fix.",
            404: "Unknown model or version.", 405: "Method not allowed.",
            408: "The body did not arrive within DEPLOYKIT_BODY_TIMEOUT_MS.",
            413: "Body over DEPLOYKIT_MAX_BODY_BYTES, or more tokens than DEPLOYKIT_MAX_REQUEST_TOKENS.",
            415: "Not a JSON body.",
            503: "Overloaded (estimated queue wait over DEPLOYKIT_MAX_QUEUE_WAIT_MS, queue or body memory "
                 "full), loading or shutting down; see Retry-After.",
            504: "The request's deadline passed before it was computed."}
    responses = {"200": ok}
    for code in codes:
        responses[str(code)] = {"description": text[code], "content": {"application/json": {"schema": ERROR}}}
    return responses


def routes(settings: ServiceConfig) -> list[Route]:
    """The classification routes (``/classify`` only with deploykit's batcher)."""
    body_errors = (400, 408, 413, 503, 504)
    timeout_header = {"name": "X-Request-Timeout", "in": "header", "required": False,
                      "description": "This request's deadline in milliseconds (at most "
                                     "DEPLOYKIT_REQUEST_TIMEOUT_MS); past it: 504.",
                      "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}
    model_params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    out: list[Route] = []
    if settings.batcher == "deploykit":
        schema = request_model(settings.max_texts).model_json_schema()
        out.append(Route("/classify", ("POST",), classify, "classify", body=True, openapi={"post": {
            "summary": "Classify texts", "operationId": "classify",
            "parameters": [timeout_header],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": _responses({"description": "One result per text, in order.", "content": {
                "application/json": {"schema": {"type": "array",
                                                "items": {"anyOf": [
                                                    Result.model_json_schema(),
                                                    MultiLabelResult.model_json_schema(),
                                                    ScoreResult.model_json_schema()]}}}}},
                *body_errors, 415)}}))
    rerank_errors = _responses({"description": "The texts' indices and scores, best first.", "content": {
        "application/json": {"schema": {"type": "array"}}}}, *body_errors, 404, 415)
    out.append(Route("/rerank", ("POST",), rerank, "rerank", body=True, openapi={"post": {
        "summary": "Rerank texts against a query (text-embeddings-inference's route; text-pair models only)",
        "operationId": "rerank", "parameters": [timeout_header],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": rerank_model(settings.max_texts).model_json_schema()}}},
        "responses": rerank_errors}}))
    out.append(Route("/v1/rerank", ("POST",), cohere_rerank, "v1_rerank", body=True, openapi={"post": {
        "summary": "Rerank documents against a query (Cohere-style, as vLLM and llama.cpp serve it; text-pair "
                   "models only)", "operationId": "v1_rerank", "parameters": [timeout_header],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": cohere_model(settings.max_texts).model_json_schema()}}},
        "responses": rerank_errors}}))
    for prefix, extra in (("/v2/models/{name}", []), ("/v2/models/{name}/versions/{version}", [version_param])):
        params = model_params + extra
        suffix = "_versioned" if extra else ""
        out += [
            Route(prefix, ("GET",), model_metadata, "v2_metadata", openapi={"get": {
                "summary": "v2 model metadata", "operationId": "v2_model_metadata" + suffix, "parameters": params,
                "responses": _responses({"description": "Inputs and outputs of the model.",
                                         "content": {"application/json": {"schema": {"type": "object"}}}}, 404)}}),
            Route(prefix + "/ready", ("GET",), model_ready, "v2_health", openapi={"get": {
                "summary": "v2 model readiness", "operationId": "v2_model_ready" + suffix, "parameters": params,
                "responses": {"200": {"description": "Ready."}, "503": {"description": "Shutting down."},
                              "404": {"description": "Unknown model or version.",
                                      "content": {"application/json": {"schema": ERROR}}}}}}),
            Route(prefix + "/infer", ("POST",), infer, "v2_infer", body=True, openapi={"post": {
                "summary": "v2 inference: TEXT (BYTES [n] or [n, 1]) -> LABEL, SCORES",
                "operationId": "v2_infer" + suffix, "parameters": [*params, timeout_header],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": _responses({"description": "LABEL and SCORES (JSON, or binary after the JSON "
                                                        "header with Inference-Header-Content-Length).",
                                         "content": {"application/json": {"schema": {"type": "object"}}}},
                                        *body_errors, 404)}}),
        ]
    return out

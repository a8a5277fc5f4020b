"""question-answering on the service: its backend (the classifier's, with this task's runtime), its routes.

- ``POST /answer`` takes ``{"question", "context", "top_k"?}`` or a list of them (1 to
  ``DEPLOYKIT_MAX_TEXTS``) and answers the transformers pipeline's fields ``{"answer", "score", "start",
  "end"}`` (offsets into the context; an empty answer at 0-0 when the question has none), plus
  ``model`` and ``variant``: for one object with ``top_k`` 1, those fields at the top level; with
  ``top_k`` > 1, ``{"answers": [...]}`` ranked; for a list, ``{"answers": [one per question]}`` (each a
  dict, or a list when its ``top_k`` > 1).
- The KServe v2 model routes (``/v2/models/{name}[/versions/1]``, ``.../ready``, ``.../infer``): BYTES
  inputs ``QUESTION`` and ``CONTEXT`` [n] or [n, 1]; outputs BYTES ``ANSWER``, FP32 ``SCORE``, INT64
  ``START`` and ``END`` [n] (each question's best answer). ``tritonclient`` works unchanged.

Both go through the process's one batcher (``deploykit.serve.batcher``): a question is its windows,
whose batcher interleaves the rows of queued requests (a 20-window context does not starve one-window
questions), with the same token budget, admission by time, deadlines, 413 past ``max_request_tokens``
and 4xx rules as ``/classify``. Imports only numpy, onnxruntime, tokenizers, pydantic and deploykit's
serving side: never torch, transformers or datasets.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from deploykit.config import ServiceConfig
from deploykit.serve import backend, v2
from deploykit.serve.app import Call, HTTPError, Reply, Route, json_reply, request_timeout
from deploykit.serve.quoting import quote, shorten
from deploykit.tasks.classification.serve import ClassificationBackend, Text, model_of
from deploykit.tasks.question_answering.runtime import MAX_TOP_K, Runtime
from deploykit.tasks.token_classification.serve import ERRORS, TIMEOUT_HEADER, responses, v2_routes

INPUTS = ("QUESTION", "CONTEXT")
OUTPUTS = ("ANSWER", "SCORE", "START", "END")
# Requests whose answers are read off the event loop (a big request would stall the others).
_INLINE_WINDOWS = 32
_INLINE_CHARS = 20_000  # larger requests are tokenized on a thread
_NOT_JSON = (b"multipart/", b"application/vnd.bentoml+pickle")


class Question(BaseModel, extra="forbid"):
    """One question of ``/answer``."""

    question: Text = Field(description="The question (non-empty).")
    context: Text = Field(description="The text the answer is found in (non-empty; any length: it is windowed).")
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K, strict=True)] = Field(
        1, description=f"Answers to return, best first (1 to {MAX_TOP_K}).")


@functools.cache
def request_adapter(max_texts: int) -> TypeAdapter:
    """The ``/answer`` body: one question, or a list of 1 to ``max_texts`` (one adapter validates the
    body and gives ``/docs.json`` its schema)."""
    return TypeAdapter(Question | Annotated[list[Question], Field(min_length=1, max_length=max_texts)])


class AnswerBackend(ClassificationBackend):
    """The loaded reader of one service process: the classifier's backend (batcher, settings, drain,
    close) with this task's runtime and routes."""

    runtime_class = Runtime

    def routes(self) -> list[Route]:
        return routes(self.settings)

    def describe(self) -> str:
        r = self.runtime
        h = r.head
        return (f"{r.name} (question-answering, variant {r.variant}, windows of {r.max_length} sharing {h.doc_stride}, "
                f"max_answer_len {h.max_answer_len}, null threshold {h.null_threshold}) with deploykit's batcher")

    async def answers(self, call: Call, questions: list[str], contexts: list[str], top_k: list[int],
                      timeout_us: Any = None, route: str = "answer") -> list[list[dict[str, Any]]]:
        """Each question's ranked answers, through the batcher (every question's windows as its rows)."""
        runtime, batcher = self.runtime, self.batcher
        start = time.perf_counter()
        if sum(map(len, contexts)) + sum(map(len, questions)) > _INLINE_CHARS:
            rows = await asyncio.get_running_loop().run_in_executor(None, runtime.tokenize, questions, contexts)
        else:
            rows = runtime.tokenize(questions, contexts)
        if call.timeline is not None:
            call.timeline.tokenize = (start, time.perf_counter())
        logits = await batcher.submit_rows(rows, deadline=batcher.deadline(request_timeout(call, timeout_us)),
                                           disconnected=call.disconnected, route=route, timeline=call.timeline)

        def work() -> list[list[dict[str, Any]]]:
            return runtime.answers(contexts, rows, logits, top_k)

        if len(rows) <= _INLINE_WINDOWS:
            return work()
        return await asyncio.get_running_loop().run_in_executor(None, work)


def load(artifact: str, settings: ServiceConfig, metrics: Any) -> AnswerBackend:
    """The reader of one service process (the serve contract's ``load``)."""
    return AnswerBackend(artifact, settings, metrics)


# The serve contract's hooks a batched task shares (deploykit.serve.backend).
preflight = backend.runtime_preflight(Runtime)
deployment_values = backend.no_deployment_values
bento_apis = backend.no_bento_apis


# --- handlers ---------------------------------------------------------------------------------

def _fields(answer: dict[str, Any]) -> dict[str, Any]:
    return {"answer": answer["answer"], "score": float(answer["score"]), "start": int(answer["start"]),
            "end": int(answer["end"])}


async def answer(call: Call) -> Reply:
    backend: AnswerBackend = call.backend
    content_type = (call.header(b"content-type") or b"application/json").lower()
    if content_type.startswith(_NOT_JSON):
        raise HTTPError(415, f"/answer takes a JSON body, not {quote(content_type)}; send "
                        "Content-Type: application/json and {\"question\": ..., \"context\": ...}")
    limit = backend.settings.max_texts
    try:
        body = request_adapter(limit).validate_json(call.body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        where = shorten(".".join(map(str, errors[0]["loc"]))) or "the body"
        raise HTTPError(400, f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} in the request body: "
                        f"{errors[0]['msg']} at {where}; send {{\"question\": non-empty string, \"context\": non-empty "
                        f"string, \"top_k\": 1 to {MAX_TOP_K} (optional)}} or a list of 1 to {limit} of them",
                        detail=errors) from None
    items = body if isinstance(body, list) else [body]
    found = await backend.answers(call, [q.question for q in items], [q.context for q in items],
                                  [q.top_k for q in items])
    runtime = backend.runtime
    shaped = [[_fields(a) for a in f] if q.top_k > 1 else _fields(f[0]) for q, f in zip(items, found)]
    tail = {"model": runtime.name, "variant": runtime.variant}
    if isinstance(body, list):
        return json_reply({"answers": shaped, **tail})
    if body.top_k > 1:
        return json_reply({"answers": shaped[0], **tail})
    return json_reply({**shaped[0], **tail})


def metadata(name: str) -> dict[str, Any]:
    """The v2 model metadata document of a reader."""
    return {"name": name, "versions": [v2.VERSION], "platform": "deploykit_question_answering",
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in INPUTS],
            "outputs": [{"name": "ANSWER", "datatype": "BYTES", "shape": [-1]},
                        {"name": "SCORE", "datatype": "FP32", "shape": [-1]},
                        {"name": "START", "datatype": "INT64", "shape": [-1]},
                        {"name": "END", "datatype": "INT64", "shape": [-1]}]}


async def model_metadata(call: Call) -> Reply:
    return json_reply(metadata(model_of(call).name))


def _tensor(name: str, values: list[Any], binary: bool) -> tuple[dict[str, Any], bytes]:
    """One output tensor: its JSON entry and, with binary data, its bytes."""
    kind = {"ANSWER": "BYTES", "SCORE": "FP32", "START": "INT64", "END": "INT64"}[name]
    entry: dict[str, Any] = {"name": name, "datatype": kind, "shape": [len(values)]}
    if not binary:
        entry["data"] = values
        return entry, b""
    if kind == "BYTES":
        blob = v2.serialize_bytes([v.encode() for v in values])
    else:
        blob = np.asarray(values, dtype=np.float32 if kind == "FP32" else np.int64).tobytes()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob


async def infer(call: Call) -> Reply:
    backend: AnswerBackend = model_of(call)  # type: ignore[assignment]
    header = call.header(v2.HEADER_LENGTH.lower().encode())
    try:
        req = v2.parse_infer(call.body, None if header is None else header.decode("latin-1"),
                             backend.settings.max_texts, offered=OUTPUTS, inputs=INPUTS)
    except v2.ProtocolError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    questions, contexts = req.columns[INPUTS[0]], req.columns[INPUTS[1]]
    found = await backend.answers(call, questions, contexts, [1] * len(questions), req.timeout_us, route="v2_infer")
    best = [f[0] for f in found]
    values = {"ANSWER": [a["answer"] for a in best], "SCORE": [float(a["score"]) for a in best],
              "START": [int(a["start"]) for a in best], "END": [int(a["end"]) for a in best]}
    entries, blobs = [], []
    for name in OUTPUTS:
        if name in req.outputs:
            entry, blob = _tensor(name, values[name], req.outputs[name])
            entries.append(entry)
            blobs.append(blob)
    head: dict[str, Any] = {"model_name": backend.name, "model_version": v2.VERSION, "outputs": entries}
    if req.request_id is not None:
        head["id"] = req.request_id
    if not any(blobs):
        return json_reply(head)
    head_bytes = orjson.dumps(head)
    return Reply(head_bytes + b"".join(blobs), content_type=b"application/octet-stream",
                 headers=[(v2.HEADER_LENGTH.lower().encode(), str(len(head_bytes)).encode())])


# --- routes and their OpenAPI operations --------------------------------------------------------

ANSWER = {"type": "object", "description": "An answer: its text and character offsets into the context (an empty "
                                           "answer at 0-0 when the question has none).",
          "properties": {"answer": {"type": "string"}, "score": {"type": "number"}, "start": {"type": "integer"},
                         "end": {"type": "integer"}}}


def routes(settings: ServiceConfig) -> list[Route]:
    """``/answer`` and the v2 model routes (token classification's ``v2_routes``)."""
    reply = {"type": "object", "properties": {
        **ANSWER["properties"], "answers": {"type": "array", "items": {}},
        "model": {"type": "string"}, "variant": {"type": "string"}}}
    return [Route("/answer", ("POST",), answer, "answer", body=True, openapi={"post": {
        "summary": "The answer to a question in a context, with character offsets", "operationId": "answer",
        "parameters": [TIMEOUT_HEADER],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": request_adapter(settings.max_texts).json_schema()}}},
        "responses": responses({"description": "The answer (a list with top_k > 1 or a list of questions).",
                                "content": {"application/json": {"schema": reply}}}, *ERRORS)}}),
            *v2_routes(model_metadata, infer, "v2 inference: QUESTION, CONTEXT (BYTES [n]) -> ANSWER, SCORE, START, "
                       "END [n]", "ANSWER, SCORE, START, END (JSON, or binary after the JSON header with "
                       "Inference-Header-Content-Length).")]

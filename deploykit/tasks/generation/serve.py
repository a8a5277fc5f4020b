"""The text-generation task on the service: its backend (generator + engine) and its routes.

Routes, on the same lean layer (``deploykit.serve.app``), body limits and metrics as
classification:

- ``POST /generate``: ``{"prompt": ...}`` or ``{"messages": [...]}`` with sampling settings;
  JSON back, or with ``"stream": true`` server-sent events, one per text chunk, the last one
  with the finish reason and the token counts;
- ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``: the OpenAI API
  (streaming and not), so OpenAI clients work unchanged (``model`` must be the served name).

Continuous batching: one ``Engine`` per process runs the generator's iteration-level scheduler
on a worker thread, stepping while any sequence runs; requests join between steps and leave as
they finish. A client that disconnects (or a request past its deadline before its first token)
is cancelled at once: it leaves the batch at the next step and its cache is freed.
Admission: at most ``DEPLOYKIT_MAX_QUEUE`` sequences wait for a place (503 + Retry-After past
it), and none while shutting down.

The functions the service calls (``load``, ``preflight``, ``bento_apis``, ``deployment_values``)
are the task's serve contract (``deploykit.serve.backend``). Imports only numpy, onnxruntime,
tokenizers, jinja2, pydantic, orjson and deploykit's serving side and this task's runtime and
head: never torch, transformers or datasets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from typing import Annotated, Any, AsyncIterator, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from deploykit.config import ServiceConfig
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.serve import backend
from deploykit.serve.app import Call, HTTPError, Reply, Route, json_reply, request_timeout
from deploykit.serve.batcher import DeadlineExceeded, Overloaded
from deploykit.serve.quoting import quote, shorten
from deploykit.tasks.generation.head import Generation
from deploykit.tasks.generation.runtime import Event, Generator, Sampling, Seq

log = logging.getLogger(__name__)

NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
SSE = b"text/event-stream"


# --- the engine: the scheduler on a worker thread ----------------------------------------------

class Stream:
    """The events of one sequence, handed from the engine's thread to the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, route: str = "generate") -> None:
        self.loop = loop
        self.route = route  # the route label its prompt counts under while it waits
        self.waiting_tokens = 0  # its prompt's tokens until its first event (deploykit_queued_tokens)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seq: Seq | None = None
        self.submitted = time.perf_counter()
        self.last: float | None = None  # when its latest token came (inter-token latency)
        self.error: Exception | None = None

    def push(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # its event loop is closed (shutdown): nobody to tell
            pass


class Engine:
    """The generator's scheduler stepped on one worker thread while any sequence runs.

    Args:
        generator: The loaded model.
        settings: The service settings (batch size, cache bound, queue bound, deadlines).
        metrics: Where tokens, TTFT, inter-token latency and running sequences go.
    """

    def __init__(self, generator: Generator, settings: ServiceConfig, metrics: Any) -> None:
        self.generator, self.metrics = generator, metrics
        self.scheduler = generator.scheduler(settings.max_batch_size)
        self.max_waiting = settings.max_queue
        self.request_timeout = settings.request_timeout_ms / 1000
        self._wake = threading.Event()
        self._closed = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self._deadlines: dict[int, float] = {}  # id(seq) -> deadline of its first token

    def submit(self, prompt: list[int], sampling: Sampling, timeout_s: float | None = None,
               route: str = "generate") -> Stream:
        """Queue a sequence; its events arrive on the returned stream (``route``: the label its
        waiting prompt tokens count under in ``deploykit_queued_tokens``).

        Raises:
            Overloaded: Shutting down, or ``DEPLOYKIT_MAX_QUEUE`` sequences wait already.
            BadInputError: The prompt cannot fit (context or cache bound).
        """
        if self._draining:
            self.metrics.rejected("draining")
            raise Overloaded("the server is shutting down; retry on another replica", reason="draining",
                             retry_after=1)
        if self.scheduler.waiting >= self.max_waiting:
            self.metrics.rejected("queue_full")
            raise Overloaded(f"{self.scheduler.waiting} sequences wait for a place in the batch, the limit "
                             "(DEPLOYKIT_MAX_QUEUE); retry later", reason="queue_full", retry_after=1)
        stream = Stream(asyncio.get_running_loop(), route)
        timeout = self.request_timeout if timeout_s is None else min(timeout_s, self.request_timeout)
        self.metrics.input_tokens(len(prompt))
        # Counted in before the engine's thread can see the sequence (its first event counts it out).
        stream.waiting_tokens = len(prompt)
        self.metrics.queued(route, len(prompt))
        try:
            stream.seq = self.scheduler.submit(prompt, sampling, tag=stream)
        except BaseException:
            self.metrics.queued(route, -len(prompt))
            raise
        self._deadlines[id(stream.seq)] = stream.submitted + timeout
        self._start()
        self._wake.set()
        return stream

    def cancel(self, seq: Seq) -> None:
        """Drop a sequence now (its client left): it leaves the batch at the next step."""
        if not seq.finished:
            self.scheduler.cancel(seq)
            self._wake.set()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="deploykit-generate", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            if not self.scheduler.busy:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._expire()
            try:
                start = time.perf_counter()
                events = self.scheduler.step()
                now = time.perf_counter()
            except Exception as exc:  # a model failure fails the running sequences; keep serving
                log.exception("a generation step failed")
                self._fail_all(exc)
                continue
            tokens = sum(e.token is not None for e in events)
            if tokens:
                self.metrics.generation_step(len(self.scheduler.running), tokens, now - start)
            for event in events:
                self._deliver(event, now)
            self.metrics.sequences(len(self.scheduler.running), self.scheduler.waiting,
                                   self.scheduler.cache_tokens)

    def _deliver(self, event: Event, now: float) -> None:
        stream: Stream = event.seq.tag
        if stream.waiting_tokens:  # its first event: it left the waiting queue (joined, or cancelled)
            self.metrics.queued(stream.route, -stream.waiting_tokens)
            stream.waiting_tokens = 0
        if event.token is not None:
            if stream.last is None:
                self.metrics.first_token(now - stream.submitted)
            else:
                self.metrics.inter_token(now - stream.last)
            stream.last = now
        if event.finished:
            self._deadlines.pop(id(event.seq), None)
        stream.push(event)

    def _expire(self) -> None:
        """Cancel waiting sequences whose deadline for a first token has passed (504)."""
        now = time.perf_counter()
        for seq in list(self.scheduler.pending()):
            if now > self._deadlines.get(id(seq), float("inf")):
                seq.tag.error = DeadlineExceeded("the request's deadline passed before the model had a place "
                                                 "for it; retry, or raise X-Request-Timeout")
                self.metrics.dropped("deadline", 1)
                self.scheduler.cancel(seq)

    def _fail_all(self, exc: Exception) -> None:
        for event in self.scheduler.abort():
            event.seq.tag.error = exc
            self._deliver(event, time.perf_counter())

    def drain(self) -> None:
        """Stop admitting; running and waiting sequences go on."""
        self._draining = True

    def fail_queued(self, reason: str = "shutdown") -> int:
        """Answer every sequence still waiting or running with 503 now (shutdown past its bound)."""
        seqs = [*self.scheduler.running, *self.scheduler.pending()]
        for seq in seqs:
            seq.tag.error = Overloaded("the server is shutting down; retry on another replica", reason=reason,
                                       retry_after=1)
            self.cancel(seq)
        return len(seqs)

    def close(self) -> None:
        self._closed = True
        self._wake.set()


# --- the backend ------------------------------------------------------------------------------

class GenerationBackend:
    """The loaded text-generation model of one service process: generator, engine, settings.

    Raises:
        BadInputError, IntegrityError: As ``Generator`` (the artifact is refused before serving).
    """

    def __init__(self, artifact: str, settings: ServiceConfig, metrics: Any) -> None:
        self.settings, self.metrics = settings, metrics
        self.generator = Generator(artifact, settings.variant, threads=settings.threads,
                                   providers=settings.provider_list(), max_batch_size=settings.max_batch_size,
                                   max_cache_tokens=settings.max_cache_tokens,
                                   spin=settings.spins(True))  # steps back to back: the Generator's ``spin``
        self.engine = Engine(self.generator, settings, metrics)
        self.name = self.generator.name
        self.draining = False

    def describe(self) -> str:
        g = self.generator
        return (f"{g.name} (text-generation, variant {g.variant}; up to {g.max_batch_size} sequences, "
                f"{g.max_cache_tokens} cached tokens)")

    def routes(self) -> list[Route]:
        return routes()

    def drain(self, timeout_s: float) -> None:
        """Shutdown: refuse new sequences now, end what is still waiting after ``timeout_s``."""
        self.draining = True
        self.engine.drain()
        asyncio.get_running_loop().call_later(timeout_s, self.engine.fail_queued)

    def close(self) -> None:
        self.engine.close()


def load(artifact: str, settings: ServiceConfig, metrics: Any) -> GenerationBackend:
    """The text-generation model of one service process (the serve contract's ``load``)."""
    return GenerationBackend(artifact, settings, metrics)


def preflight(artifact: str, variant: str, settings: ServiceConfig) -> None:
    """Load the artifact as a worker will (``Generator``: inputs, outputs, cache), so that
    ``deploykit serve`` fails before anything listens."""
    Generator(artifact, variant, threads=1, providers=settings.provider_list(),
              max_batch_size=settings.max_batch_size, max_cache_tokens=settings.max_cache_tokens)


bento_apis = backend.no_bento_apis  # every route is the lean layer's


# Sequences decoded together, and the memory of Python, BentoML, onnxruntime and the tokenizer
# without the model, in a Deployment of a text-generation artifact.
DEPLOYMENT_MAX_BATCH_SIZE = 32
DEPLOYMENT_BASE_MIB = 512


def deployment_values(manifest: Manifest, variant: str) -> dict[str, str]:
    """A text-generation artifact's settings and memory request, from the manifest's sizes.

    The memory request is twice the served graph's weights (onnxruntime keeps the initializers
    and its pre-packed copies), twice the key/value cache at its bound (a step's new cache is
    allocated while the old one is alive) and a fixed allowance for Python, BentoML and the
    tokenizer; the limit is twice the request, as for ``--memory``.
    """
    cache_tokens = ServiceConfig().max_cache_tokens
    weights = sum(manifest.files[rel].bytes for rel in manifest.files_of(variant))
    cache = cache_tokens * manifest.head_as(Generation).cache.bytes_per_token()
    mib = (2 * weights + 2 * cache) / 2**20 + DEPLOYMENT_BASE_MIB
    return {"DEPLOYKIT_MAX_BATCH_SIZE": str(DEPLOYMENT_MAX_BATCH_SIZE),
            "DEPLOYKIT_MAX_CACHE_TOKENS": str(cache_tokens), "memory": f"{int(-(-mib // 64) * 64)}Mi"}


# --- requests ---------------------------------------------------------------------------------

class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: NonBlank
    content: str
    name: str | None = None


class _Sampling(BaseModel):
    """Settings every route takes; omitted ones fall back on the model's generation defaults."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=100, description="0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="/generate only: 0 keeps every token.")
    seed: int | None = Field(None, ge=0, description="Reproducible sampling (a non-negative integer).")
    stop: NonBlank | list[NonBlank] | None = Field(None, description="Stop string(s), not part of the text.")
    stream: bool = Field(False, description="Server-sent events instead of one JSON answer.")


class GenerateRequest(_Sampling):
    """``POST /generate``."""

    prompt: NonBlank | None = Field(None, description="The text to continue.")
    messages: list[Message] | None = Field(None, min_length=1, description="A conversation, rendered with "
                                                                          "the model's chat template.")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    ignore_eos: bool = Field(False, description="Go on past the end-of-sequence token (benchmarks).")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _OpenAI(_Sampling):
    """What the OpenAI API's completion requests share (unsupported options are refused by name)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    n: Literal[1] = 1
    user: str | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0, 0.0] | None = None
    frequency_penalty: Literal[0, 0.0] | None = None


class CompletionRequest(_OpenAI):
    """``POST /v1/completions``."""

    prompt: NonBlank | Annotated[list[NonBlank], Field(min_length=1, max_length=1)]


class ChatRequest(_OpenAI):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def _parse(model: type[BaseModel], call: Call) -> Any:
    try:
        return model.model_validate_json(call.body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        where = shorten(".".join(map(str, first["loc"]))) or "the body"
        raise HTTPError(400, f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} in the request body: "
                        f"{first['msg']} at {where}", detail=errors) from None


def _start(call: Call, prompt: Any, max_new_tokens: int | None, req: _Sampling, ignore_eos: bool = False,
           route: str = "generate") -> Stream:
    """Tokenize, check the settings and queue the sequence (400 for what the request got wrong)."""
    backend: GenerationBackend = call.backend
    limit = backend.settings.max_new_tokens
    if max_new_tokens is not None and max_new_tokens > limit:
        raise HTTPError(400, f"max_new_tokens {max_new_tokens} is over this server's limit of {limit} "
                        "(DEPLOYKIT_MAX_NEW_TOKENS)")
    g = backend.generator
    try:
        start = time.perf_counter()
        ids = g.encode(prompt if isinstance(prompt, str) else [m.model_dump(exclude_none=True) for m in prompt])
        if call.timeline is not None:
            call.timeline.tokenize = (start, time.perf_counter())
        sampling = g.sampling(max_new_tokens=max_new_tokens or min(g.head.defaults["max_new_tokens"], limit),
                              temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                              stop=req.stop, ignore_eos=ignore_eos)
        return backend.engine.submit(ids, sampling, request_timeout(call), route=route)
    except BadInputError as exc:
        raise HTTPError(400, str(exc)) from None


async def _events(call: Call, stream: Stream) -> AsyncIterator[Event]:
    """The sequence's events as they come; the client leaving cancels the sequence at once."""
    engine: Engine = call.backend.engine
    gone = asyncio.ensure_future(call.disconnected())
    try:
        while True:
            get = asyncio.ensure_future(stream.queue.get())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                call.backend.metrics.dropped("disconnected", 1)
                return
            event: Event = get.result()
            if stream.error is not None and event.token is None:
                raise stream.error
            timeline = call.timeline
            if timeline is not None:  # the queue: until its first token; the tokens: until the last
                if timeline.queue is None:
                    timeline.queue = (stream.submitted, time.perf_counter())
                if event.finished:
                    timeline.computed = time.perf_counter()
            yield event
            if event.finished:
                return
    finally:
        gone.cancel()
        engine.cancel(stream.seq)


def _usage(seq: Seq) -> dict[str, int]:
    return {"prompt_tokens": len(seq.prompt), "completion_tokens": len(seq.tokens),
            "total_tokens": len(seq.prompt) + len(seq.tokens)}


def _sse(payload: Any) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else orjson.dumps(payload)) + b"\n\n"


async def _first(call: Call, stream: Stream) -> tuple[AsyncIterator[Event], Event]:
    """Wait for the sequence's first event, so that refusals (deadline, shutdown) are still a
    plain error status rather than an event stream."""
    events = _events(call, stream)
    try:
        return events, await events.__anext__()
    except StopAsyncIteration:
        from deploykit.serve.batcher import ClientGone

        raise ClientGone("the client disconnected before the first token") from None


async def _collect(call: Call, stream: Stream) -> Seq:
    events, _ = await _first(call, stream)
    async for _ in events:
        pass
    return stream.seq


def _finish(seq: Seq) -> str:
    return "length" if seq.finish_reason == "length" else "stop"


# --- handlers ---------------------------------------------------------------------------------

async def generate(call: Call) -> Reply:
    req = _parse(GenerateRequest, call)
    if (req.prompt is None) == (req.messages is None):
        raise HTTPError(400, "give exactly one of 'prompt' (a non-empty string) or 'messages' (a conversation)")
    stream = _start(call, req.prompt if req.prompt is not None else req.messages, req.max_new_tokens, req,
                    ignore_eos=req.ignore_eos)
    model = call.backend.name
    if not req.stream:
        seq = await _collect(call, stream)
        return json_reply({"model": model, "text": seq.text, "finish_reason": _finish(seq), "usage": _usage(seq)})
    events, first = await _first(call, stream)

    async def body() -> AsyncIterator[bytes]:
        async for event in _chain(first, events):
            if event.delta:
                yield _sse({"text": event.delta})
            if event.finished:
                seq = event.seq
                yield _sse({"text": "", "finish_reason": _finish(seq), "usage": _usage(seq)})

    return Reply(b"", content_type=SSE, stream=_closing(body(), events))


async def _chain(first: Event, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    if not first.finished:
        async for event in events:
            yield event


async def _closing(body: AsyncIterator[bytes], events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """``body``, closing the event iterator (which cancels the sequence) however it ends."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        await events.aclose()


def _openai_model(call: Call, name: str) -> None:
    if name != call.backend.name:
        raise HTTPError(404, f"the model {quote(name)} does not exist here; this server serves {call.backend.name!r} "
                        "(GET /v1/models)")


async def completions(call: Call) -> Reply:
    req = _parse(CompletionRequest, call)
    _openai_model(call, req.model)
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    return await _openai(call, req, _start(call, prompt, req.max_tokens, req, route="openai"), chat=False)


async def chat_completions(call: Call) -> Reply:
    req = _parse(ChatRequest, call)
    _openai_model(call, req.model)
    stream = _start(call, req.messages, req.max_completion_tokens or req.max_tokens, req, route="openai")
    return await _openai(call, req, stream, chat=True)


async def _openai(call: Call, req: _OpenAI, stream: Stream, *, chat: bool) -> Reply:
    """The OpenAI answer of a completion or chat completion, whole or as server-sent events."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created, model = int(time.time()), call.backend.name
    kind = "chat.completion" if chat else "text_completion"

    def choice(text: str | None, finish: str | None, *, delta: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if delta:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                    "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    if not req.stream:
        seq = await _collect(call, stream)
        return json_reply({"id": ident, "object": kind, "created": created, "model": model,
                           "choices": [choice(seq.text, _finish(seq), delta=False)], "usage": _usage(seq)})
    events, first = await _first(call, stream)
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"
    usage_chunk = req.stream_options is not None and req.stream_options.include_usage

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload = {"id": ident, "object": chunk_kind, "created": created, "model": model, "choices": choices}
        if usage_chunk:
            payload["usage"] = usage
        return _sse(payload)

    async def body() -> AsyncIterator[bytes]:
        if chat:  # the role comes first, as OpenAI sends it
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for event in _chain(first, events):
            if event.delta:
                yield chunk([choice(event.delta, None, delta=True)])
            if event.finished:
                yield chunk([choice(None if chat else "", _finish(event.seq), delta=True)])
                if usage_chunk:
                    yield chunk([], _usage(event.seq))
                yield _sse(b"[DONE]")

    return Reply(b"", content_type=SSE, stream=_closing(body(), events))


async def models(call: Call) -> Reply:
    return json_reply({"object": "list", "data": [{"id": call.backend.name, "object": "model", "created": 0,
                                                   "owned_by": "deploykit"}]})


async def not_a_classifier(call: Call) -> Reply:
    raise HTTPError(404, f"this server serves the text-generation model {call.backend.name!r}; use POST "
                    "/generate, /v1/completions or /v1/chat/completions")


# --- routes and their OpenAPI operations --------------------------------------------------------

ERROR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {400: "Malformed request: a field, setting or prompt the message names (too long, empty, unknown "
                "field, max_new_tokens over DEPLOYKIT_MAX_NEW_TOKENS).",
           404: "Unknown model (OpenAI routes).",
           408: "The body did not arrive within DEPLOYKIT_BODY_TIMEOUT_MS.",
           413: "Body over DEPLOYKIT_MAX_BODY_BYTES.",
           503: "Overloaded (DEPLOYKIT_MAX_QUEUE sequences waiting), loading or shutting down; see Retry-After.",
           504: "No place in the batch before the request's deadline."}


# The OpenAI API's error types by status (what its clients read from {"error": {...}}).
_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                       408: "timeout_error", 413: "invalid_request_error", 503: "server_overloaded",
                       504: "timeout_error"}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """An error in the OpenAI API's own shape, for the /v1 routes."""
    code = {401: "invalid_api_key", 404: "model_not_found"}.get(status)
    return {"error": {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"),
                      "param": None, "code": code}}


OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}}}}}


@functools.lru_cache(maxsize=None)
def routes() -> list[Route]:
    """``/generate``, the OpenAI routes, and a ``/classify`` that says what this server serves."""
    def op(summary: str, op_id: str, request: type[BaseModel] | None, ok: str,
           error: dict[str, Any] = ERROR) -> dict[str, Any]:
        doc: dict[str, Any] = {"summary": summary, "operationId": op_id, "responses": {
            "200": {"description": ok, "content": {"application/json": {"schema": {"type": "object"}},
                                                   "text/event-stream": {"schema": {"type": "string"}}}},
            **{str(c): {"description": t, "content": {"application/json": {"schema": error}}}
               for c, t in _ERRORS.items()}}}
        if request is not None:
            doc["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": request.model_json_schema()}}}
        return doc

    return [
        Route("/generate", ("POST",), generate, "generate", body=True, openapi={"post": op(
            "Generate a completion (JSON, or server-sent events with stream: true)", "generate", GenerateRequest,
            "{model, text, finish_reason, usage}; streamed: data: {text} per chunk, then {text: '', "
            "finish_reason, usage}.")}),
        Route("/v1/completions", ("POST",), completions, "openai", body=True, error=openai_error, openapi={"post": op(
            "OpenAI completions", "openai_completions", CompletionRequest, "An OpenAI text_completion.",
            OPENAI_ERROR)}),
        Route("/v1/chat/completions", ("POST",), chat_completions, "openai", body=True, error=openai_error,
              openapi={"post": op("OpenAI chat completions", "openai_chat_completions", ChatRequest,
                                  "An OpenAI chat.completion.", OPENAI_ERROR)}),
        Route("/v1/models", ("GET",), models, "openai", error=openai_error, openapi={"get": {
            "summary": "OpenAI model list", "operationId": "openai_models",
            "responses": {"200": {"description": "The served model."}}}}),
        Route("/classify", ("POST",), not_a_classifier, "classify", openapi={}),
    ]

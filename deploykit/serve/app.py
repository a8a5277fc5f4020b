"""The lean HTTP path: one ASGI layer in front of BentoML's app that serves deploykit's routes.

Every inference route (``/classify``, the KServe v2 routes) and ``/metrics``/``/docs.json`` are
answered here, installed with BentoML's own ``add_asgi_middleware``, so a request for them
never reaches BentoML's per-request machinery: no endpoint wrapper, IO descriptors, context or
Starlette router (BentoML's access log, request metrics and tracing are off by default and
come back, around this layer too, with ``DEPLOYKIT_ACCESS_LOG``, ``DEPLOYKIT_REQUEST_METRICS``,
``DEPLOYKIT_TRACING``). Everything else (``/readyz``, ``/livez``, ``/schema.json``, the UI) goes
on to BentoML unchanged. Why hand-written rather than a Starlette app: Starlette's request,
router and exception layers are most of what a one-text request costs in Python on 2 cores
(docs/benchmarks.md), and this layer needs a few dozen lines of them.

The routes come from the served task (``TASK_ROUTES``): a task module lists its ``Route``s
(path, methods, handler, OpenAPI operation), so a second task plugs its routes into the same
layer, body limits, deadlines, metrics and ``/docs.json``.

What this layer guarantees for every route:

- **Bodies**: at most ``max_body_bytes`` (413, read or declared), read within
  ``body_timeout_ms`` (408: a stalled client is answered and its connection closed), and all
  bodies being read or served at once within ``max_inflight_body_bytes`` (503).
- **Errors**: every refusal is a JSON ``{"error": ...}`` with a 4xx (or 503/504 for load), logged
  at INFO in one line without a traceback; only a bug is a 500 (logged with its traceback).
- **Shutdown**: ``drain()`` (on SIGTERM, see ``deploykit.serve.lifecycle``) stops admitting,
  answers body readers in progress, and closes every connection after its answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import orjson

from deploykit.errors import BadInputError
from deploykit.serve.batcher import ClientGone, ServiceError
from deploykit.serve.quoting import quote, shorten

log = logging.getLogger("deploykit.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"


class HTTPError(Exception):
    """A refusal answered as ``{"error": message[, "detail": detail]}`` with ``status``.

    Args:
        status: HTTP status (4xx, or 503).
        message: What was wrong and what to do.
        detail: Optional machine-readable details (the validation errors of ``/classify``).
        headers: Extra response headers.
        close: Close the connection after answering (the body may not have been read).
    """

    def __init__(self, status: int, message: str, *, detail: Any = None,
                 headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.detail, self.close = status, detail, close
        self.headers = dict(headers or {})


@dataclass
class Reply:
    """A response: status, body bytes and extra headers (content type first)."""

    body: bytes
    status: int = 200
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # A streamed body (server-sent events): sent chunk by chunk, without Content-Length.
    stream: AsyncIterator[bytes] | None = None


def json_reply(payload: Any, status: int = 200) -> Reply:
    """A JSON response (orjson: numpy-free, UTF-8, compact)."""
    return Reply(orjson.dumps(payload), status)


class Call:
    """One request as a handler sees it: the ASGI scope, path parameters and the body."""

    __slots__ = ("scope", "receive", "params", "body", "backend", "reserved", "trace")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str], backend: Any,
                 trace: Any = None) -> None:
        self.scope, self.receive, self.params, self.backend = scope, receive, params, backend
        self.body = b""
        self.reserved = 0  # bytes of the body budget this request holds
        self.trace = trace  # deploykit.serve.tracing.Trace when tracing is on

    @property
    def timeline(self) -> Any:
        """Where the batcher notes this request's times for its spans (None: not traced)."""
        return self.trace.timeline if self.trace is not None else None

    def header(self, name: bytes) -> bytes | None:
        """A request header's value (``name`` in lower case), or None."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value
        return None

    def disconnected(self) -> Awaitable[dict[str, Any]]:
        """Completes when the client disconnects (the body was read already: ASGI's next
        ``receive`` message is ``http.disconnect``)."""
        return self.receive()


@dataclass
class Route:
    """One route of the lean layer.

    Attributes:
        path: ``/classify`` or a template with ``{name}`` segments.
        methods: Accepted methods.
        handler: ``async (Call) -> Reply``; raises ``HTTPError``/``ServiceError`` to refuse.
        label: The ``route`` label of ``deploykit_requests_total`` (one of ``metrics.ROUTES``).
        openapi: ``{method: OpenAPI operation}`` for ``/docs.json``.
        body: Whether the handler needs the request body (read and bounded before it runs).
        needs_backend: Refuse with 503 while the model is still loading.
        error: The protocol's error body for a status and message (default
            ``{"error": message}``, the shape of /classify, v2 and /generate; the OpenAI routes
            give theirs).
    """

    path: str
    methods: tuple[str, ...]
    handler: Callable[[Call], Awaitable[Reply]]
    label: str
    openapi: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: bool = False
    needs_backend: bool = True
    error: Callable[[int, str], dict[str, Any]] | None = None
    pattern: re.Pattern | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if "{" in self.path:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
            self.pattern = re.compile(f"^{regex}$")


class BodyBudget:
    """The bytes of request bodies held at once, bounded (bodies being read and served).

    Args:
        limit: Most bytes at once (``DEPLOYKIT_MAX_INFLIGHT_BODY_BYTES``).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+; 3.10 times each receive instead


class Front:
    """The ASGI layer (a BentoML service middleware): deploykit's routes here, the rest onward.

    Args:
        app: The BentoML app to pass other paths to.
        get_backend: Returns the loaded backend (its task's ``routes()``, ``draining``, and what
            the handlers use) or None while it loads.
        routes: The routes served whatever the task (``deploykit.serve.routes.shared_routes``).
        max_body_bytes, body_timeout_ms, max_inflight_body_bytes: The body bounds.
        guard: The API keys (``deploykit.serve.auth.Guard``): every path but the probes, BentoML's
            included, needs one; None: no keys.
        tracer: Spans of each request (``deploykit.serve.tracing``), or None.

    The backend's ``metrics`` (``deploykit.serve.metrics``) count the answers by route.
    """

    def __init__(self, app: Callable, *, get_backend: Callable[[], Any], routes: list[Route],
                 max_body_bytes: int, body_timeout_ms: float, max_inflight_body_bytes: int,
                 guard: Any = None, tracer: Any = None) -> None:
        self.app, self.get_backend = app, get_backend
        self.guard = guard    # deploykit.serve.auth.Guard: the API keys, or None (no auth)
        self.tracer = tracer  # deploykit.serve.tracing.Tracer, or None (tracing off)
        self.shared = routes
        self._table_of: Any = object()  # the backend the route table was built for
        self.static: dict[str, Route] = {}
        self.templated: list[Route] = []
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout_ms / 1000
        self.budget = BodyBudget(max_inflight_body_bytes)
        self.draining = False
        self._readers: set[Any] = set()
        FRONTS.append(self)

    # --- routing ------------------------------------------------------------------------------

    def match(self, path: str) -> tuple[Route | None, dict[str, str]]:
        backend = self.get_backend()
        if backend is not self._table_of:  # the task's routes join once its backend is loaded
            routes = [*self.shared, *(backend.routes() if backend is not None else [])]
            self.static = {r.path: r for r in routes if r.pattern is None}
            self.templated = [r for r in routes if r.pattern is not None]
            self._table_of = backend
        route = self.static.get(path)
        if route is not None:
            return route, {}
        for route in self.templated:
            m = route.pattern.match(path)
            if m:
                return route, m.groupdict()
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, params = self.match(scope["path"])
        if self.guard is not None and self.guard.needs_key(scope["path"]) and not self.guard.allows(scope["headers"]):
            await self._unauthorized(route, scope, send)
            return
        if route is None:
            await self.app(scope, receive, send)
            return
        await self.handle(route, params, scope, receive, send)

    async def _unauthorized(self, route: Route | None, scope: Scope, send: Send) -> None:
        """401 in the protocol's own error shape, before anything is read (the key is never
        logged: only that it was missing or wrong)."""
        reply = self._error(401, "a valid API key is required: send 'Authorization: Bearer KEY' (or "
                            "'X-API-Key: KEY')", None, {"WWW-Authenticate": "Bearer"}, False, scope,
                            route.error if route is not None else None)
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", reply.content_type),
                                (b"content-length", str(len(reply.body)).encode()), *reply.headers]})
        await send({"type": "http.response.body", "body": reply.body})
        backend = self.get_backend()
        if route is not None and backend is not None:
            backend.metrics.request(route.label, 401)

    async def handle(self, route: Route, params: dict[str, str], scope: Scope, receive: Receive,
                     send: Send) -> None:
        call = None
        started = time.perf_counter()
        backend = self.get_backend()
        metrics = backend.metrics if backend is not None else None  # counted in and out alike
        if metrics is not None:
            metrics.inflight(route.label, 1)
        trace = self.tracer.start(scope["method"], route.path, scope["headers"]) if self.tracer else None
        status = 500
        try:
            try:
                if scope["method"] not in route.methods:
                    raise HTTPError(405, f"{scope['method']} is not allowed on {scope['path']}; use "
                                    f"{' or '.join(route.methods)}", headers={"Allow": ", ".join(route.methods)})
                backend = self.get_backend()
                if route.needs_backend and backend is None:
                    raise HTTPError(503, "the model is still loading; retry shortly", headers={"Retry-After": "1"})
                call = Call(scope, receive, params, backend, trace)
                if route.body:
                    if self.draining:
                        raise HTTPError(503, "the server is shutting down; retry on another replica",
                                        headers={"Retry-After": "1"}, close=True)
                    await self._read_body(call)
                reply = await route.handler(call)
            except ClientGone:
                status = 499
                self._count(metrics, route, 499, started)
                return  # nobody to answer
            except HTTPError as exc:
                reply = self._error(exc.status, str(exc), exc.detail, exc.headers, exc.close, scope, route.error)
            except BadInputError as exc:  # e.g. a text the tokenizer cannot take
                reply = self._error(400, str(exc), None, {}, False, scope, route.error)
            except ServiceError as exc:
                headers = {}
                if exc.retry_after is not None:
                    headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
                reply = self._error(exc.status, str(exc), None, headers, False, scope, route.error)
            except Exception:  # a bug: the one case that is a 500
                log.exception("%s %s failed", scope["method"], scope["path"])
                reply = self._error(500, "internal error; see the server log", None, {}, False, None, route.error)
            if self.draining and (b"connection", b"close") not in reply.headers:
                reply.headers.append((b"connection", b"close"))
            status = reply.status
            if reply.stream is not None:
                await self._stream(reply, scope, send)
                self._count(metrics, route, reply.status, started)
                return
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": [(b"content-type", reply.content_type),
                                    (b"content-length", str(len(reply.body)).encode()), *reply.headers]})
            await send({"type": "http.response.body", "body": reply.body})
            self._count(metrics, route, reply.status, started)
        finally:
            if metrics is not None:
                metrics.inflight(route.label, -1)
            if call is not None:
                self.budget.give(call.reserved)
            if trace is not None:
                trace.finish(status)

    @staticmethod
    async def _stream(reply: Reply, scope: Scope, send: Send) -> None:
        """Send a streamed reply chunk by chunk (chunked transfer encoding), and close its
        iterator however the stream ends (the handler frees what the request held there)."""
        try:
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": [(b"content-type", reply.content_type), (b"cache-control", b"no-cache"),
                                    *reply.headers]})
            async for chunk in reply.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-stream (uvicorn's ClientDisconnected)
            pass
        except ServiceError as exc:  # given up mid-stream (shutdown): the status is sent, end it short
            log.info("%s %s stream ended early: %s", scope["method"], scope["path"], exc)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:  # a failure mid-stream: the status is sent, so end the stream short
            log.exception("%s %s failed while streaming", scope["method"], scope["path"])
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await reply.stream.aclose()

    @staticmethod
    def _count(metrics: Any, route: Route, status: int, started: float) -> None:
        if metrics is not None:
            metrics.request(route.label, status, time.perf_counter() - started)

    @staticmethod
    def _error(status: int, message: str, detail: Any, headers: Mapping[str, str], close: bool,
               scope: Scope | None, shape: Callable[[int, str], dict[str, Any]] | None = None) -> Reply:
        if scope is not None:
            log.info("%s %s -> %d: %s", scope["method"], shorten(scope["path"]), status, message)
        payload: dict[str, Any] = {"error": message} if shape is None else shape(status, message)
        if detail is not None and shape is None:
            payload["detail"] = detail
        extra = [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
        if close:
            extra.append((b"connection", b"close"))
        return Reply(orjson.dumps(payload), status, headers=extra)

    # --- bodies -------------------------------------------------------------------------------

    async def _read_body(self, call: Call) -> None:
        """Read the body into ``call.body`` within the bounds (``call.reserved`` counts the bytes
        taken from the budget; ``handle`` gives them back once the request is answered).

        Raises:
            HTTPError: 413 (too large), 408 (too slow), 503 (memory budget, shutting down).
            ClientGone: The client disconnected while sending it.
        """
        declared = call.header(b"content-length")
        if declared is not None:
            size = int(declared) if declared.isdigit() else -1
            if size < 0:
                raise HTTPError(400, f"Content-Length {quote(declared)} is not a "
                                "number of bytes", close=True)
            if size > self.max_body_bytes:
                raise self._too_large(str(size))
            self._reserve(call, size)
        try:
            if _timeout is None:
                chunks = await asyncio.wait_for(self._receive_all(call), self.body_timeout)
            else:
                async with _timeout(self.body_timeout) as deadline:
                    self._readers.add(deadline)
                    try:
                        chunks = await self._receive_all(call)
                    finally:
                        self._readers.discard(deadline)
        except (TimeoutError, asyncio.TimeoutError):
            if self.draining:
                raise HTTPError(503, "the server is shutting down; retry on another replica",
                                headers={"Retry-After": "1"}, close=True) from None
            raise HTTPError(408, f"the request body did not arrive within {self.body_timeout:g} s "
                            "(DEPLOYKIT_BODY_TIMEOUT_MS); send the whole body promptly", close=True) from None
        call.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _receive_all(self, call: Call) -> list[bytes]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await call.receive()
            if message["type"] != "http.request":
                raise ClientGone("the client disconnected while sending the body")
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise self._too_large(f"more than {size}")
                if size > call.reserved:  # no (or a lying) Content-Length: reserve as it arrives
                    self._reserve(call, size - call.reserved)
            if not message.get("more_body", False):
                return chunks or [b""]

    def _reserve(self, call: Call, n: int) -> None:
        if not self.budget.take(n):
            if call.backend is not None:
                call.backend.metrics.rejected("memory")
            raise HTTPError(503, f"the server holds {self.budget.used} bytes of request bodies, its limit "
                            "(DEPLOYKIT_MAX_INFLIGHT_BODY_BYTES); retry shortly",
                            headers={"Retry-After": "1"}, close=True)
        call.reserved += n

    def _too_large(self, size: str) -> HTTPError:
        return HTTPError(413, f"request body of {size} bytes is over the limit of {self.max_body_bytes} "
                         "bytes (DEPLOYKIT_MAX_BODY_BYTES); send fewer or shorter texts per request", close=True)

    # --- shutdown -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop admitting requests and answer every body still being read (503, then close)."""
        self.draining = True
        now = asyncio.get_running_loop().time()
        for deadline in list(self._readers):
            deadline.reschedule(now)


# Every Front of this process, for lifecycle.drain (BentoML builds the app, so the instance is
# not otherwise reachable).
FRONTS: list[Front] = []


def request_timeout(call: Call, parameter_us: Any = None) -> float | None:
    """The client's own timeout in seconds: the ``X-Request-Timeout`` header (milliseconds) or a
    v2 ``timeout`` parameter (microseconds, as tritonclient sends it), else None.

    Raises:
        HTTPError: 400 if either is not a positive number.
    """
    header = call.header(b"x-request-timeout")
    if header is not None:
        try:
            ms = float(header)
        except ValueError:
            ms = -1
        if not ms > 0 or ms != ms or ms == float("inf"):
            raise HTTPError(400, f"X-Request-Timeout must be a positive number of milliseconds, got "
                            f"{quote(header)}")
        return ms / 1000
    if parameter_us is not None:
        if isinstance(parameter_us, bool) or not isinstance(parameter_us, int) or parameter_us <= 0:
            raise HTTPError(400, f"parameter 'timeout' must be a positive integer of microseconds, got "
                            f"{quote(parameter_us)}")
        return parameter_us / 1e6
    return None

"""One dynamic batcher per process, shared by every inference route of the service.

Requests are tokenized on arrival, **admitted by time**, wait in a queue, and are computed in
*steps*: one step is one bounded piece of model work (at most ``max_batch_size`` texts and
``max_batch_tokens`` tokens), run as length-sorted model calls on one worker thread while the
event loop keeps accepting requests.

- **Admission by time, not count.** The batcher keeps a running estimate of a step's cost, a
  fixed part plus a part per token (``StepCost``, fitted on the recent steps, seeded by the
  runtime's load probe) and, for each new request, estimates the wait it will really see under
  the fair scheduler below (``DynamicBatcher.estimate``, the one admission rule, kept beside ``_take``,
  the scheduler it models): the rest of the step in progress plus the steps that run before the
  request's first row is taken. Beyond ``max_queue_wait_ms`` the request is refused at once
  (``Overloaded``: HTTP 503 with ``Retry-After``) instead of queueing seconds of work.
  ``max_queue`` (texts) stays as a memory bound.
- **Deadlines.** Every request carries a deadline; a request still queued at its deadline is
  dropped, and the waiter gets ``DeadlineExceeded`` (HTTP 504). A request whose deadline cannot
  be met even by the estimate (its wait plus its own steps at its fair share) is refused the
  same way on arrival.
- **No dead work.** ``submit`` takes an optional ``disconnected`` (the service passes "the
  client's connection closed"); when that happens first, the request leaves the queue before
  any more of it is computed.
- **Fairness.** A step first takes one row (the longest left) of each queued request in queue
  order while the step has room, then shares what room is left among the requests in it, one
  row each in turn; a request with rows left goes to the back of the queue. A request of 256
  long texts is thus computed in several steps, and a request arriving meanwhile is in the very
  next step: it waits at most the rest of the running step, however big the requests ahead.
- **Continuous batching.** A step starts as soon as the model is free; while under load (the
  previous step held more than one request) it waits up to ``max_latency_ms`` for company; a
  lone request never waits.
- **Memory back after big requests.** After calls of at least ``_RELEASE_TOKENS`` padded tokens,
  once no step has run for a second, the runtime hands their memory back
  (``Runtime.release_memory``); under steady load nothing is released (it would be taken again
  at once), so the process holds at most what its biggest step needs.

Why hand-written rather than BentoML's ``batchable=True``: BentoML's batcher serves only its
own route (the v2 routes could reach it only through a second HTTP hop), it cannot drop a
request whose client left, split a big request or refuse by time, and its scheduler's wait
grows after a burst (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Sequence

import numpy as np


if TYPE_CHECKING:  # the classifier's runtime, which this batcher feeds
    from deploykit.tasks.classification.runtime import Encoded, Runtime

log = logging.getLogger(__name__)

# Requests with more characters than this are tokenized on a thread, not on the event loop.
_INLINE_TOKENIZE_CHARS = 20_000
# Weight of the newest step in the step-cost fit (about the last 20 steps count).
_COST_SMOOTHING = 0.05
# After model calls of at least this many padded tokens, memory is handed back once the queue
# is empty (onnxruntime's arena, the C heap): one big request must not keep its memory.
_RELEASE_TOKENS = 2048
_IDLE_BEFORE_RELEASE = 1.0  # seconds


class ServiceError(Exception):
    """A request the batcher refuses or gives up on; ``status`` is the HTTP answer.

    Attributes:
        status: HTTP status code.
        reason: Short label for metrics (``queue_wait``, ``deadline``, ...).
        retry_after: Seconds a client should wait before retrying (``Retry-After``), or None.
    """

    status = 500
    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.reason
        self.retry_after = retry_after


class Overloaded(ServiceError):
    """Refused on arrival: the queue's estimated wait (or size) is over its bound, or the
    server is shutting down. HTTP 503 with ``Retry-After``."""

    status = 503
    reason = "queue_wait"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed (or cannot be met) before it was computed. HTTP 504."""

    status = 504
    reason = "deadline"


class TooLarge(ServiceError):
    """The request holds more tokens than one request may (``max_request_tokens``). HTTP 413."""

    status = 413
    reason = "too_large"


class ClientGone(ServiceError):
    """The client disconnected; the request was dropped (nobody reads the answer)."""

    status = 499
    reason = "disconnected"


class BatchMetrics(Protocol):
    """What the batcher reports (the service backs it with Prometheus)."""

    def batch(self, size: int, tokens: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def rejected(self, reason: str = "queue_wait") -> None: ...

    def dropped(self, reason: str, texts: int) -> None: ...

    def unread(self, texts: int) -> None: ...

    def queued(self, route: str, tokens: int) -> None: ...

    def input_tokens(self, tokens: int) -> None: ...


class StepCost:
    """The seconds a step takes, as a fixed part per step plus a part per token, fitted on the
    recent steps (exponentially weighted least squares over their tokens and seconds).

    Why not seconds per token alone (what the batcher used first): each model call of a step
    has a fixed cost, so a small step's cost per token is several times a big one's; learned on
    the small steps of a closed-loop load and applied to a long queue, which drains in big
    steps, it over-estimated the wait about 2x (refusals logged at 500-550 ms against a real p50
    of 248-277 ms, docs/benchmarks.md). When the recent steps were all about one size the fit is
    undetermined, and the cost is per token only.

    Args:
        seconds_per_token: The runtime's load probe (one row of ``tokens`` tokens), the first
            observation; None when unknown.
        tokens: The probe's tokens.
    """

    def __init__(self, seconds_per_token: float | None, tokens: int) -> None:
        self.per_token, self.fixed = seconds_per_token, 0.0
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        if seconds_per_token is not None:
            self.add(tokens, seconds_per_token * tokens)

    def add(self, tokens: int, seconds: float) -> None:
        """One finished step: ``tokens`` real tokens in ``seconds``."""
        keep = 1 - _COST_SMOOTHING
        self._w = keep * self._w + 1
        self._x = keep * self._x + tokens
        self._y = keep * self._y + seconds
        self._xx = keep * self._xx + tokens * tokens
        self._xy = keep * self._xy + tokens * seconds
        spread = self._w * self._xx - self._x * self._x
        if spread > 0.01 * self._x * self._x:  # step sizes vary by more than ~10%
            per_token = (self._w * self._xy - self._x * self._y) / spread
            fixed = (self._y - per_token * self._x) / self._w
            if per_token > 0 and fixed >= 0:
                self.per_token, self.fixed = per_token, fixed
                return
        self.per_token, self.fixed = self._y / max(self._x, 1.0), 0.0

    def seconds(self, tokens: int, steps: int) -> float | None:
        """Estimated seconds of ``steps`` steps holding ``tokens`` tokens (None when unknown)."""
        if self.per_token is None:
            return None
        return self.fixed * steps + self.per_token * tokens


class NoMetrics:
    """A ``BatchMetrics`` that records nothing (tests, benchmarks)."""

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def rejected(self, reason: str = "queue_wait") -> None:
        pass

    def dropped(self, reason: str, texts: int) -> None:
        pass

    def unread(self, texts: int) -> None:
        pass

    def queued(self, route: str, tokens: int) -> None:
        pass

    def input_tokens(self, tokens: int) -> None:
        pass


@dataclass(eq=False)
class _Request:
    """A queued request: its rows, what is left to compute (longest first) and its answer."""

    rows: list[Encoded]
    future: asyncio.Future
    deadline: float
    enqueued: float = field(default_factory=time.perf_counter)
    left: list[int] = field(default_factory=list)  # row indices not yet taken, longest last
    tokens_left: int = 0
    done_rows: int = 0
    started: bool = False
    logits: np.ndarray | None = None
    route: str = "classify"  # the route label its queued tokens are counted under
    timeline: Any = None  # deploykit.serve.tracing.Timeline of a traced request


class DynamicBatcher:
    """Admits requests by their estimated wait and computes them in fair, bounded steps.

    Args:
        runtime: The loaded artifact.
        max_batch_size: Most texts in one step (and one model call).
        max_batch_tokens: Token budget of one step (and one model call: texts x padded length).
        max_latency_ms: Longest wait for more requests, applied only under load.
        max_queue: Most texts waiting; more is ``Overloaded`` (reason ``queue_full``).
        max_queue_wait_ms: Longest estimated wait a request is admitted with; more is
            ``Overloaded`` (reason ``queue_wait``). None: no bound by time.
        request_timeout_ms: Default deadline of a request (from its arrival).
        max_request_tokens: Most tokens (after truncation) in one request; more is ``TooLarge``.
        metrics: Where batch size, tokens, inference time, queue wait, refusals and drops go.
    """

    def __init__(self, runtime: Runtime, *, max_batch_size: int = 64, max_batch_tokens: int = 16384,
                 max_latency_ms: float = 5.0, max_queue: int = 4096, max_queue_wait_ms: float | None = None,
                 request_timeout_ms: float = 30_000, max_request_tokens: int | None = None,
                 metrics: BatchMetrics | None = None) -> None:
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max(max_batch_tokens, runtime.max_length)
        self.max_latency = max_latency_ms / 1000
        self.max_queue = max_queue
        self.max_queue_wait = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000
        self.request_timeout = request_timeout_ms / 1000
        self.max_request_tokens = max_request_tokens
        self.metrics = metrics or NoMetrics()
        self._queue: collections.deque[_Request] = collections.deque()
        # What the queue holds, kept up to date for the estimate (``_count``): requests with rows
        # left, their rows and tokens, and the tokens of each one's next (longest) row.
        self._queued_requests = self._queued_rows = self._queued_tokens = self._next_row_tokens = 0
        self._cost = StepCost(runtime.probe_seconds_per_token, runtime.max_length)
        self._step_tokens = 0  # tokens of the step in progress
        self._step_started = 0.0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._draining = False
        # One model call at a time: onnxruntime already spreads one call over the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deploykit-infer")
        self._under_load = False
        self._big_since_release = False  # a call of _RELEASE_TOKENS or more since the last release
        self._release_task: asyncio.Task | None = None
        self._last_step_end = 0.0

    # --- the public API ----------------------------------------------------------------------

    async def submit(self, texts: Sequence[str], *, deadline: float | None = None,
                     disconnected: Callable[[], Awaitable] | None = None,
                     route: str = "classify", timeline: Any = None) -> tuple[list[Encoded], np.ndarray]:
        """Tokenize texts, queue them and wait for their logits.

        Args:
            texts: Validated, non-empty strings.
            deadline: ``time.perf_counter()`` value after which the request is given up
                (default: now + ``request_timeout_ms``).
            disconnected: Optional function returning an awaitable that completes when the
                client leaves (called once the request is admitted); if it does before the
                answer, the request leaves the queue and ``ClientGone`` is raised.
            route: The route label its queued tokens count under (``deploykit_queued_tokens``).
            timeline: Where to note its tokenize, queue and step times (a traced request).

        Returns:
            ``(rows, logits)``: the encoded rows (with their ``truncated`` flags) and one output
            row per encoded row, in the given order (the runtime's ``run`` rows: a classifier's
            float32 logits [len(texts), num_labels]; a token classifier's windows' logits).

        Raises:
            Overloaded: Refused on arrival (estimated wait over the bound, queue full, shutting
                down); nothing was queued.
            TooLarge: More tokens than ``max_request_tokens``.
            DeadlineExceeded: The deadline passed, or could not be met, before the request was
                computed.
            ClientGone: The client left first.
            BadInputError: A text the tokenizer cannot take.
        """
        start = time.perf_counter()
        if sum(map(len, texts)) > _INLINE_TOKENIZE_CHARS:
            # A large request would stall every other request on the event loop meanwhile.
            rows = await asyncio.get_running_loop().run_in_executor(None, self.runtime.tokenize, texts)
        else:
            rows = self.runtime.tokenize(texts)
        if timeline is not None:
            timeline.tokenize = (start, time.perf_counter())
        return rows, await self.submit_rows(rows, deadline=deadline, disconnected=disconnected, route=route,
                                            timeline=timeline)

    async def classify(self, texts: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """``submit`` turned into the runtime's result dicts (label, score, scores, truncated)."""
        rows, logits = await self.submit(texts, **options)
        return self.runtime.results(logits, rows)

    def deadline(self, timeout_s: float | None = None) -> float:
        """The deadline of a request arriving now: the client's own timeout if shorter than the
        server's ``request_timeout_ms``."""
        timeout = self.request_timeout if timeout_s is None else min(timeout_s, self.request_timeout)
        return time.perf_counter() + timeout

    async def submit_rows(self, rows: list[Encoded], *, deadline: float | None = None,
                          disconnected: Callable[[], Awaitable] | None = None,
                          route: str = "classify", timeline: Any = None) -> np.ndarray:
        """Like ``submit`` for rows tokenized already; returns the logits."""
        request = self._admit(rows, self.deadline() if deadline is None else deadline, route)
        request.timeline = timeline
        waiters: set[Any] = {request.future}
        until = None
        if disconnected is not None:
            until = asyncio.ensure_future(disconnected())
            waiters.add(until)
        try:
            while True:
                timeout = request.deadline - time.perf_counter()
                done, _ = await asyncio.wait(waiters, timeout=max(timeout, 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if request.future.done():
                    return request.future.result()
                if until is not None and until in done:
                    if until.cancelled() or until.exception() is not None or _is_disconnect(until.result()):
                        self._drop(request, "disconnected", ClientGone("the client disconnected"))
                        return request.future.result()  # raises
                    waiters.discard(until)  # something else arrived; keep waiting for the answer
                    continue
                self._drop(request, "deadline", DeadlineExceeded(
                    f"no answer within the request's deadline ({self._deadline_hint()})"))
                return request.future.result()  # raises
        finally:
            if until is not None and not until.done():
                until.cancel()

    def estimate(self, next_row: int = 1, tokens: int = 1) -> tuple[float, float]:
        """The one admission rule: how long a request arriving now will wait under ``_take``.

        ``_take`` gives every queued request one row per step, in queue order, before it shares
        the rest of the step out, so a new request's first row is taken in the first step whose
        first round reaches it: after the steps it takes to give one row to each of the
        ``n`` requests ahead (at most ``max_batch_size`` rows and ``max_batch_tokens`` tokens a
        step), however big they are. Those steps are full (``max_batch_tokens``, or
        ``max_batch_size`` rows of the queue's mean next row, if fewer; never more than is
        queued). Its own rows are then taken at its fair share of each step, the budget over
        the requests sharing it (at least its next row), each of its steps as full as the queue
        allows.

        Args:
            next_row: Tokens of the request's longest row (the one ``_take`` takes first).
            tokens: All its tokens.

        Returns:
            ``(wait, answer)``: seconds until its first step starts (the rest of the running
            step, then the steps before it) and until its last step ends. Both 0 while the step
            cost is unknown (no probe and no step yet).
        """
        if self._cost.per_token is None:
            return 0.0, 0.0
        wait = 0.0
        if self._step_tokens:  # the rest of the step in progress
            elapsed = time.perf_counter() - self._step_started
            wait = max(0.0, self._cost.seconds(self._step_tokens, 1) - elapsed)
        ahead, budget = self._queued_requests, self.max_batch_tokens
        steps = max(ahead // self.max_batch_size, (self._next_row_tokens + next_row - 1) // budget)
        if steps:
            full = min(budget, self.max_batch_size * self._next_row_tokens / ahead)
            wait += self._cost.seconds(int(min(steps * full, self._queued_tokens)), steps)
        share = max(next_row, budget / min(ahead + 1, self.max_batch_size))
        own_steps = math.ceil(tokens / share)
        step_tokens = min(budget, self._queued_tokens + tokens)
        return wait, wait + self._cost.seconds(own_steps * step_tokens, own_steps)

    def estimated_wait(self) -> float:
        """Seconds a one-text request arriving now would wait before its first step (0 when
        unknown): ``estimate``'s wait."""
        return self.estimate()[0]

    def drain(self) -> None:
        """Stop admitting (``Overloaded``, reason ``draining``); queued requests still run."""
        self._draining = True

    def fail_queued(self, reason: str = "shutdown") -> int:
        """Answer every queued request with ``Overloaded`` now (shutdown past its bound).

        Returns:
            How many requests were dropped.
        """
        dropped = 0
        for request in list(self._queue):
            if not request.future.done():
                self._drop(request, reason, Overloaded("the server is shutting down; retry on another "
                                                       "replica", reason=reason, retry_after=1))
                dropped += 1
        return dropped

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or running."""
        return not self._queued_requests and not self._step_tokens

    def close(self) -> None:
        """Stop the worker task and thread."""
        for task in (self._task, self._release_task):
            if task is not None:
                task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- admission ---------------------------------------------------------------------------

    def _admit(self, rows: list[Encoded], deadline: float, route: str = "classify") -> _Request:
        tokens = sum(r.length for r in rows)
        self.metrics.input_tokens(tokens)
        if self.max_request_tokens is not None and tokens > self.max_request_tokens:
            raise TooLarge(f"the request holds {tokens} tokens, more than the limit of {self.max_request_tokens} "
                           "per request (DEPLOYKIT_MAX_REQUEST_TOKENS); split it into smaller requests")
        if self._draining:
            self.metrics.rejected("draining")
            raise Overloaded("the server is shutting down; retry on another replica", reason="draining",
                             retry_after=1)
        if self._queued_rows + len(rows) > self.max_queue:
            self.metrics.rejected("queue_full")
            raise Overloaded(f"the batching queue is full ({self._queued_rows} texts waiting, limit "
                             f"{self.max_queue}); retry later or raise DEPLOYKIT_MAX_QUEUE",
                             reason="queue_full", retry_after=max(1.0, self.estimated_wait()))
        now = time.perf_counter()
        wait, answer = self.estimate(max(r.length for r in rows), tokens)
        # An empty queue admits anything within the token cap: a request bigger than the bound
        # on its own is not made to wait for nothing.
        if self.max_queue_wait is not None and wait > self.max_queue_wait and self._queued_requests:
            self.metrics.rejected("queue_wait")
            raise Overloaded(f"the server is at capacity: the estimated queue wait is {wait * 1000:.0f} ms, "
                             f"over the bound of {self.max_queue_wait * 1000:.0f} ms "
                             "(DEPLOYKIT_MAX_QUEUE_WAIT_MS); retry after the Retry-After seconds",
                             reason="queue_wait", retry_after=wait)
        if now + answer >= deadline:
            self.metrics.dropped("deadline", len(rows))
            raise DeadlineExceeded(f"the estimated time to answer ({answer * 1000:.0f} ms: {wait * 1000:.0f} ms in "
                                   f"the queue, then its own steps) is longer than the request's deadline "
                                   f"({self._deadline_hint()})")
        self._ensure_started()
        # Rows left shortest first, so that the next (longest) one pops off the end.
        request = _Request(rows, asyncio.get_running_loop().create_future(), deadline, now,
                           sorted(range(len(rows)), key=lambda i: rows[i].length), tokens, route=route)
        self._queue.append(request)
        self._count(request, 1)
        self._wakeup.set()
        return request

    def _count(self, request: _Request, sign: int) -> None:
        """Add (``sign`` 1) or take out (-1) a queued request's share of the queue's totals."""
        if request.left:
            self._queued_requests += sign
            self._queued_rows += sign * len(request.left)
            self._queued_tokens += sign * request.tokens_left
            self._next_row_tokens += sign * request.rows[request.left[-1]].length
            self.metrics.queued(request.route, sign * request.tokens_left)

    @staticmethod
    def _deadline_hint() -> str:
        return ("DEPLOYKIT_REQUEST_TIMEOUT_MS, or the client's X-Request-Timeout header / v2 'timeout' "
                "parameter")

    def _drop(self, request: _Request, reason: str, error: ServiceError) -> None:
        """Take a request out of the queue (lazily: the next step skips it) and answer its waiter
        with ``error``; its rows not yet taken are never computed."""
        if request.future.done():
            return
        if request.left:
            self.metrics.dropped(reason, len(request.left))
            self._count(request, -1)
            request.left, request.tokens_left = [], 0
        request.future.set_exception(error)

    # --- the worker --------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        # Started lazily so that the task lives on the event loop that serves requests.
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _full(self) -> bool:
        rows = tokens = 0
        for request in self._queue:
            rows += len(request.left)
            tokens += request.tokens_left
            if rows >= self.max_batch_size or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take(self) -> list[tuple[_Request, list[int]]]:
        """One step, the scheduler ``estimate`` models: first one row (its longest left) of each
        queued request in queue order while the step has room, then the room left shared out
        among the requests in the step, one row each in turn; the requests in the step with rows
        left go to the back of the queue, those the step did not reach stay at its front."""
        now = time.perf_counter()
        members: list[tuple[_Request, list[int]]] = []
        rows = tokens = 0

        def take(request: _Request, taken: list[int]) -> None:
            nonlocal rows, tokens
            length = request.rows[request.left[-1]].length
            taken.append(request.left.pop())
            request.tokens_left -= length
            rows += 1
            tokens += length

        # First round: every request in turn gets a row, until one does not fit.
        while self._queue and rows < self.max_batch_size and tokens < self.max_batch_tokens:
            request = self._queue[0]
            if request.future.done() or not request.left:  # answered already (dropped: counted out)
                self._queue.popleft()
                continue
            if request.deadline <= now:
                self._queue.popleft()
                self._drop(request, "deadline", DeadlineExceeded(
                    f"no answer within the request's deadline ({self._deadline_hint()})"))
                continue
            if rows and tokens + request.rows[request.left[-1]].length > self.max_batch_tokens:
                break  # first in the next step
            self._queue.popleft()
            self._count(request, -1)
            taken: list[int] = []
            take(request, taken)
            members.append((request, taken))
        # Then the room left, one row per request in turn (a row that does not fit is left for
        # the request's next step; a shorter one of another request may still fit).
        growing = True
        while growing and rows < self.max_batch_size and tokens < self.max_batch_tokens:
            growing = False
            for request, taken in members:
                if (request.left and rows < self.max_batch_size
                        and tokens + request.rows[request.left[-1]].length <= self.max_batch_tokens):
                    take(request, taken)
                    growing = True
        for request, taken in members:
            if not request.started:
                request.started = True
                self.metrics.queue_wait(now - request.enqueued)
                if request.timeline is not None:
                    request.timeline.queue = (request.enqueued, now)
            if request.left:
                self._queue.append(request)  # its next turn comes after everyone queued now
                self._count(request, 1)
        return members

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._under_load and self.max_latency > 0:
                # Under load, give concurrent requests a short, bounded chance to join.
                deadline = self._queue[0].enqueued + self.max_latency
                while not self._full() and time.perf_counter() < deadline:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - time.perf_counter())
                    except asyncio.TimeoutError:
                        break
            step = self._take()
            if not step:
                continue
            self._under_load = len(step) > 1 or bool(self._queue)
            rows = [request.rows[i] for request, taken in step for i in taken]
            self._step_tokens = sum(r.length for r in rows)
            self._step_started = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._executor, self._infer, rows)
            except Exception as exc:  # a model failure answers these requests, not the others
                log.exception("model call failed for a step of %d texts", len(rows))
                for request, _ in step:
                    self._drop(request, "error", ServiceError(f"the model failed on this request ({exc})"))
                self._step_tokens = 0
                continue
            ended = time.perf_counter()
            self._cost.add(self._step_tokens, ended - self._step_started)
            step_tokens, self._step_tokens = self._step_tokens, 0
            offset = 0
            for request, taken in step:
                part = logits[offset:offset + len(taken)]
                offset += len(taken)
                if request.future.done():  # the client left or the deadline passed while this step ran
                    self.metrics.unread(len(taken))
                    continue
                if request.timeline is not None:
                    request.timeline.steps.append((self._step_started, ended, len(rows), step_tokens))
                    request.timeline.computed = ended
                if request.logits is None:
                    request.logits = np.zeros((len(request.rows), *part.shape[1:]), dtype=part.dtype)
                request.logits[taken] = part
                request.done_rows += len(taken)
                if request.done_rows == len(request.rows):
                    request.future.set_result(request.logits)
            self._last_step_end = time.perf_counter()
            if self._big_since_release and self._release_task is None:
                self._release_task = loop.create_task(self._release_when_idle())

    async def _release_when_idle(self) -> None:
        """Hand memory back once no step has run for ``_IDLE_BEFORE_RELEASE`` seconds (under
        steady load the memory would be taken again at once, so it is kept)."""
        try:
            while True:
                await asyncio.sleep(_IDLE_BEFORE_RELEASE)
                if self.idle and time.perf_counter() - self._last_step_end >= _IDLE_BEFORE_RELEASE:
                    break
            self._big_since_release = False
            await asyncio.get_running_loop().run_in_executor(self._executor, self.runtime.release_memory)
        finally:
            self._release_task = None

    def _infer(self, rows: list[Encoded]) -> np.ndarray:
        """Run rows as length-sorted model calls within the budgets (on the worker thread).

        Returns:
            One output row per input row, as the runtime's ``run`` gives them: a classifier's
            logits [rows, labels]; a token classifier's object array of [tokens, labels] arrays.
        """
        out = None
        for batch in self.runtime.plan(rows):
            batch_rows = [rows[i] for i in batch]
            tokens = len(batch) * batch_rows[0].length
            self._big_since_release |= tokens >= _RELEASE_TOKENS
            start = time.perf_counter()
            part = self.runtime.run(batch_rows)
            self.metrics.batch(len(batch), tokens, time.perf_counter() - start)
            if out is None:
                out = np.zeros((len(rows), *part.shape[1:]), dtype=part.dtype)
            out[batch] = part
        return out


def _is_disconnect(message: Any) -> bool:
    return isinstance(message, dict) and message.get("type") == "http.disconnect"

"""One dynamic batcher per process, shared by ``/classify`` and the v2 ``infer`` route.

Requests are tokenized on arrival, wait in a bounded queue, and are grouped by a token budget
(rows x padded length, as text-embeddings-inference does) and a batch size; the group runs as
length-sorted model calls on one worker thread while the event loop keeps accepting requests.

Why hand-written rather than BentoML's ``batchable=True``: BentoML's batcher serves only its
own route (the v2 routes could reach it only through a second HTTP hop), and its scheduler's
wait grows after a burst. This batcher runs as soon as the model is free (continuous
batching) and waits up to ``max_latency_ms`` for company only while under load, i.e. when
the previous group held more than one request; a lone request never waits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from deploykit.runtime import Encoded, Runtime

log = logging.getLogger(__name__)

# Requests with more characters than this are tokenized on a thread, not on the event loop.
_INLINE_TOKENIZE_CHARS = 20_000


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` texts already; the caller should answer 503."""


class BatchMetrics(Protocol):
    """What the batcher reports (the service backs it with Prometheus)."""

    def batch(self, size: int, tokens: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def rejected(self) -> None: ...


class NoMetrics:
    """A ``BatchMetrics`` that records nothing (tests, benchmarks)."""

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def rejected(self) -> None:
        pass


@dataclass
class _Pending:
    rows: list[Encoded]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def width(self) -> int:
        return max((r.length for r in self.rows), default=0)


class DynamicBatcher:
    """Groups concurrent requests into model calls within a token budget and a batch size.

    Args:
        runtime: The loaded artifact.
        max_batch_size: Most texts in one model call.
        max_batch_tokens: Token budget of one model call (texts x padded length).
        max_latency_ms: Longest wait for more requests, applied only under load.
        max_queue: Most texts waiting; ``submit`` raises ``QueueFullError`` beyond it.
        metrics: Where batch size, tokens, inference time, queue wait and rejections go.
    """

    def __init__(self, runtime: Runtime, *, max_batch_size: int = 64, max_batch_tokens: int = 16384,
                 max_latency_ms: float = 5.0, max_queue: int = 4096,
                 metrics: BatchMetrics | None = None) -> None:
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max(max_batch_tokens, runtime.max_length)
        self.max_latency = max_latency_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics or NoMetrics()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One model call at a time: onnxruntime already spreads one call over the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deploykit-infer")
        self._under_load = False

    async def submit(self, texts: Sequence[str]) -> tuple[list[Encoded], np.ndarray]:
        """Tokenize texts, queue them for the next batch and wait for their logits.

        Args:
            texts: Validated, non-empty strings.

        Returns:
            ``(rows, logits)``: the encoded rows (with their ``truncated`` flags) and float32
            logits [len(texts), num_labels], in the given order.

        Raises:
            QueueFullError: If the queue is full (the request is not queued).
        """
        if sum(map(len, texts)) > _INLINE_TOKENIZE_CHARS:
            # A large request would stall every other request on the event loop meanwhile.
            rows = await asyncio.get_running_loop().run_in_executor(None, self.runtime.tokenize, texts)
        else:
            rows = self.runtime.tokenize(texts)
        return await self.submit_rows(rows)

    async def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """``submit`` turned into the runtime's result dicts (label, score, scores, truncated)."""
        rows, logits = await self.submit(texts)
        return self.runtime.results(logits, rows)

    async def submit_rows(self, rows: list[Encoded]) -> tuple[list[Encoded], np.ndarray]:
        """Like ``submit`` for rows tokenized already; returns ``(rows, logits)``."""
        if self._queued_rows + len(rows) > self.max_queue:
            self.metrics.rejected()
            raise QueueFullError(f"the batching queue is full ({self._queued_rows} texts waiting, "
                                 f"limit {self.max_queue}); retry later or raise DEPLOYKIT_MAX_QUEUE")
        self._ensure_started()
        pending = _Pending(rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += len(rows)
        self._wakeup.set()
        return rows, await pending.future

    def _ensure_started(self) -> None:
        # Started lazily so that the task lives on the event loop that serves requests.
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _take(self) -> list[_Pending]:
        """Pop queued requests (FIFO) while they fit the size and token budgets together."""
        group: list[_Pending] = []
        rows = width = 0
        while self._queue:
            nxt = self._queue[0]
            new_rows, new_width = rows + len(nxt.rows), max(width, nxt.width)
            if group and (new_rows > self.max_batch_size or new_rows * new_width > self.max_batch_tokens):
                break
            group.append(self._queue.popleft())
            self._queued_rows -= len(nxt.rows)
            rows, width = new_rows, new_width
        return group

    def _full(self) -> bool:
        rows = sum(len(p.rows) for p in self._queue)
        width = max((p.width for p in self._queue), default=0)
        return rows >= self.max_batch_size or rows * width >= self.max_batch_tokens

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
            group = self._take()
            group = [p for p in group if not p.future.done()]  # drop requests whose client left
            if not group:
                continue
            self._under_load = len(group) > 1 or bool(self._queue)
            start = time.perf_counter()
            for p in group:
                self.metrics.queue_wait(start - p.enqueued)
            rows = [r for p in group for r in p.rows]
            try:
                logits = await loop.run_in_executor(self._executor, self._infer, rows)
            except Exception as exc:  # a model failure fails this group only; keep serving
                log.exception("inference failed for a batch of %d texts", len(rows))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in group:
                if not p.future.done():
                    p.future.set_result(logits[offset:offset + len(p.rows)])
                offset += len(p.rows)

    def _infer(self, rows: list[Encoded]) -> np.ndarray:
        """Run rows as length-sorted model calls within the budgets (on the worker thread)."""
        out = np.zeros((len(rows), len(self.runtime.labels)), dtype=np.float32)
        for batch in self.runtime.plan(rows):
            batch_rows = [rows[i] for i in batch]
            start = time.perf_counter()
            out[batch] = self.runtime.run(batch_rows)
            self.metrics.batch(len(batch), len(batch) * batch_rows[0].length,
                               time.perf_counter() - start)
        return out

    def close(self) -> None:
        """Stop the worker task and thread."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

"""Timing loops and latency summaries shared by the offline and online benchmarks."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def summarize_latencies(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/min/max of latencies, in milliseconds.

    Args:
        seconds: Latencies in seconds (at least one).

    Returns:
        ``{"p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"}``; numpy's linear
        interpolation keeps p50 <= p95 <= p99.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {k: float("nan") for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def time_calls(call: Callable[[int], int], *, warmup: int, min_iters: int, min_duration: float,
               max_iters: int | None = None) -> tuple[list[float], int, float]:
    """Call ``call(i)`` ``warmup`` times untimed, then until both minimums are met.

    Args:
        call: Runs iteration ``i`` and returns the number of tokens it processed.
        warmup: Untimed calls first (session and allocator warm-up).
        min_iters: Timed calls at least.
        min_duration: Timed seconds at least.
        max_iters: Stop after this many timed calls even if ``min_duration`` is not reached.

    Returns:
        (per-call latencies in seconds, total tokens of the timed calls, timed wall seconds).
    """
    for i in range(warmup):
        call(i)
    latencies: list[float] = []
    tokens = 0
    start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        tokens += call(warmup + i)
        latencies.append(time.perf_counter() - t0)
        i += 1
        elapsed = time.perf_counter() - start
        if i >= min_iters and elapsed >= min_duration:
            break
        if max_iters is not None and i >= max_iters:
            break
    return latencies, tokens, time.perf_counter() - start

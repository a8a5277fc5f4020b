"""deploykit's Prometheus series and the ``/metrics`` page that shows them.

BentoML's own per-request metrics are off by default (they label every series with the raw
URL path, so requests to random paths grow ``/metrics`` and the metrics folder without bound,
and they cost time on every request). deploykit's series have fixed labels only: the route
label is one of ``ROUTES``, whatever path was asked for.

BentoML runs each worker with ``PROMETHEUS_MULTIPROC_DIR`` set, and ``prometheus_client``
then keeps values in files there, one set per process; ``exposition`` merges them, so the page
is right with any number of workers, and includes BentoML's series when a user turns them on.
"""

from __future__ import annotations

import os
from typing import Any

# The values of the ``route`` label of deploykit_requests_total (a fixed set: bounded series).
ROUTES = ("classify", "ner", "answer", "v2_infer", "v2_metadata", "v2_health", "metrics", "docs", "generate", "openai",
          "rerank", "v1_rerank")
# The ``status`` label of deploykit_request_seconds: the status class (a bounded set).
_STATUS_CLASS = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class PrometheusMetrics:
    """The batcher's and the routes' series, named as docs/architecture.md fixes.

    Create one per process (Prometheus refuses duplicate names): ``get()``.
    """

    def __init__(self) -> None:
        # Imported here, not at module top: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker
        # after importing the service module, and prometheus_client reads it on import.
        import prometheus_client as prom

        self._batch_size = prom.Histogram("deploykit_batch_size", "Texts per model call",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self._batch_tokens = prom.Histogram("deploykit_batch_tokens", "Padded tokens per model call",
                                            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
        self._queue_wait = prom.Histogram("deploykit_queue_wait_seconds",
                                          "Time a request waited in the batching queue before its first step",
                                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self._inference = prom.Histogram("deploykit_inference_seconds", "Time of one model call",
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self._rejected = prom.Counter("deploykit_rejected", "Requests refused on arrival with 503, by "
                                      "reason (queue_wait, queue_full, draining, memory)", ["reason"])
        self._dropped = prom.Counter("deploykit_dropped_texts", "Texts left uncomputed because their "
                                     "request's deadline passed or its client left, by reason", ["reason"])
        self._unread = prom.Counter("deploykit_unread_texts", "Texts computed whose answer nobody read: "
                                    "the client left or the deadline passed while their step ran")
        self._requests = prom.Counter("deploykit_requests", "Requests answered by deploykit's routes, by "
                                      "route and status code", ["route", "code"])
        # What a platform scales and alerts on: requests in flight and tokens queued per route
        # (summed over the workers), each request's time end to end, and the size of requests.
        self._inflight = prom.Gauge("deploykit_inflight_requests", "Requests being read, queued, computed "
                                    "or answered, by route", ["route"], multiprocess_mode="livesum")
        self._queued_tokens = prom.Gauge("deploykit_queued_tokens", "Tokens waiting for the model (not yet "
                                         "in a step, or a prompt not yet in the batch), by route", ["route"],
                                         multiprocess_mode="livesum")
        self._request_seconds = prom.Histogram("deploykit_request_seconds", "From a request's arrival at "
                                               "deploykit's layer to its last byte sent, by route and status "
                                               "class (2xx, 4xx, 5xx)", ["route", "status"],
                                               buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                        5, 10, 30))
        self._input_tokens = prom.Histogram("deploykit_input_tokens", "Tokens of one request's input (texts "
                                            "after truncation, or the prompt)",
                                            buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                                                     16384, 32768))
        # text-generation: tokens (their rate is tokens/s), the step's own rate, time to first
        # token, inter-token latency, and the batch (running and waiting sequences, cached tokens).
        self._tokens = prom.Counter("deploykit_generated_tokens", "Tokens generated (rate: tokens/s)")
        self._tokens_per_s = prom.Gauge("deploykit_generation_tokens_per_second", "Tokens per second of the "
                                        "latest decoding step (all running sequences)", multiprocess_mode="livesum")
        self._ttft = prom.Histogram("deploykit_time_to_first_token_seconds", "From a request's arrival to its "
                                    "first generated token", buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self._itl = prom.Histogram("deploykit_inter_token_seconds", "Between two tokens of one sequence",
                                   buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self._running = prom.Gauge("deploykit_running_sequences", "Sequences in the decoding batch",
                                   multiprocess_mode="livesum")
        self._waiting = prom.Gauge("deploykit_waiting_sequences", "Sequences waiting for a place in the batch",
                                   multiprocess_mode="livesum")
        self._cache = prom.Gauge("deploykit_cache_tokens", "Tokens the batch's key/value cache holds "
                                 "(padding included)", multiprocess_mode="livesum")

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._batch_tokens.observe(tokens)
        self._inference.observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def rejected(self, reason: str = "queue_wait") -> None:
        self._rejected.labels(reason).inc()

    def dropped(self, reason: str, texts: int) -> None:
        self._dropped.labels(reason).inc(texts)

    def unread(self, texts: int) -> None:
        self._unread.inc(texts)

    def request(self, route: str, code: int, seconds: float | None = None) -> None:
        """One answered request: its status code, and its time end to end when known."""
        self._requests.labels(route, str(code)).inc()
        if seconds is not None:
            self._request_seconds.labels(route, _STATUS_CLASS.get(code // 100, "5xx")).observe(seconds)

    def inflight(self, route: str, change: int) -> None:
        """A request entered (+1) or left (-1) deploykit's layer."""
        self._inflight.labels(route).inc(change)

    def queued(self, route: str, tokens: int) -> None:
        """Tokens joined (positive) or left (negative) the queue of ``route``."""
        self._queued_tokens.labels(route).inc(tokens)

    def input_tokens(self, tokens: int) -> None:
        self._input_tokens.observe(tokens)

    def generation_step(self, rows: int, tokens: int, seconds: float) -> None:
        self._tokens.inc(tokens)
        self._tokens_per_s.set(tokens / seconds if seconds > 0 else 0.0)
        self._batch_size.observe(rows)
        self._inference.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def sequences(self, running: int, waiting: int, cache_tokens: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._cache.set(cache_tokens)


_METRICS: PrometheusMetrics | None = None


def get() -> PrometheusMetrics:
    """This process's metrics (created on first use)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = PrometheusMetrics()
    return _METRICS


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` page: every process's series when multiprocess, else this one's.

    Returns:
        ``(body, content type)``.
    """
    import prometheus_client as prom

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and os.path.isdir(folder):
        from prometheus_client import multiprocess

        registry: Any = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    else:
        registry = prom.REGISTRY
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

"""``deploykit bench online``: an asyncio load generator against a running service.

The protocol's task (``tasks.of_protocol``: its folder's ``bench.Online``) sends the requests;
request/response protocols share the load plan here (``run_levels``), streaming ones bring
their own (a text-generation service's TTFT and tokens/s).

Closed loop: at concurrency C, C clients each send their next request as soon as the previous
one is answered. Open loop (``--rate``): requests start on a fixed schedule whether or not
earlier ones finished, and latency counts from the scheduled start, so a server that falls
behind cannot hide it (no coordinated omission). Each level is bounded in time. Sequential
single requests run before the first level and again right after the heaviest one, which
exposes batching waits that stick after a burst.

Only loopback targets are accepted unless ``--allow-remote``: a load test aimed at someone
else's server is an attack.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from deploykit.progress import bar as progress_bar

from deploykit import tasks
from deploykit.bench import client, report
from deploykit.bench.stats import summarize_latencies
from deploykit.config import BenchOnlineConfig, int_list, to_dict
from deploykit.errors import BadInputError

log = logging.getLogger(__name__)


def is_loopback(url: str) -> bool:
    """Whether every address the URL's host resolves to is a loopback address."""
    host = urlparse(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_target(cfg: BenchOnlineConfig) -> None:
    """Refuse a non-loopback target unless ``--allow-remote``.

    Raises:
        BadInputError: The URL's host is not this machine and ``allow_remote`` is off.
    """
    if not cfg.allow_remote and not is_loopback(cfg.url):
        raise BadInputError(f"--url {cfg.url} is not a loopback address (127.0.0.0/8, ::1, localhost); "
                            "load-test only servers you run: pass --allow-remote if this one is yours")


class Target(Protocol):
    """How a task's load generator sends texts to the service in one request and checks the answer
    (text-classification's ``bench.Target``: ``/classify`` or the v2 protocol)."""

    url: str
    hint: str  # what to check when the test request is refused (for the error message)

    def body(self, texts: list[str]) -> dict[str, Any]:
        """The JSON body of one request."""

    def valid(self, answer: Any, n: int) -> bool:
        """Whether a 200 answer holds one result per text."""


class Online(Protocol):
    """What this stage calls on the task whose load generator speaks ``--protocol``
    (``deploykit/tasks/<task>/bench.py``'s ``Online``, built from the config)."""

    kind: str  # the results' "kind"

    def texts(self) -> list[str]:
        """The requests' inputs: a seeded sample of ``--data`` (``--samples`` of them)."""

    async def levels(self, texts: list[str]) -> list[dict[str, Any]]:
        """Run every load level with ``texts`` as the requests' inputs."""

    def facts(self) -> dict[str, Any]:
        """Extra top-level keys of the results."""

    def write(self, out: Path, results: dict[str, Any]) -> None:
        """results.json, results.md and plots."""


class Recorder:
    """Outcomes of one level: (start, latency, status) per request; status "ok" or an error name."""

    def __init__(self) -> None:
        self.records: list[tuple[float, float, str]] = []

    def add(self, start: float, latency: float, status: str) -> None:
        self.records.append((start, latency, status))


async def send(session, target: Target, texts: list[str], timeout: float) -> str:
    import aiohttp

    try:
        async with session.post(target.url, json=target.body(texts),
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            payload = await resp.read()
            if resp.status != 200:
                return str(resp.status)
            import json

            try:
                return "ok" if target.valid(json.loads(payload), len(texts)) else "bad_response"
            except ValueError:
                return "bad_response"
    except asyncio.TimeoutError:
        return "timeout"
    except aiohttp.ClientError:
        return "connection_error"


class TextCycle:
    """Hands out the next ``n`` texts of the sample, wrapping around."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.i = texts, 0

    def take(self, n: int) -> list[str]:
        out = [self.texts[(self.i + k) % len(self.texts)] for k in range(n)]
        self.i = (self.i + n) % len(self.texts)
        return out


async def closed_loop(session, target: Target, texts: TextCycle, per_request: int, concurrency: int,
                      warmup: float, duration: float, timeout: float) -> tuple[Recorder, float]:
    """``concurrency`` clients back to back for ``warmup + duration`` seconds.

    Returns:
        (the requests started after the warm-up, the measured window in seconds).
    """
    recorder = Recorder()
    t0 = time.perf_counter()
    window_start, end = t0 + warmup, t0 + warmup + duration

    async def client() -> None:
        while (start := time.perf_counter()) < end:
            status = await send(session, target, texts.take(per_request), timeout)
            if start >= window_start:
                recorder.add(start, time.perf_counter() - start, status)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return recorder, time.perf_counter() - window_start


async def open_loop(session, target: Target, texts: TextCycle, per_request: int, rate: float,
                    warmup: float, duration: float, timeout: float) -> tuple[Recorder, float]:
    """Requests started every ``1/rate`` seconds; latency counts from the scheduled start."""
    recorder = Recorder()
    t0 = time.perf_counter()
    window_start, end = t0 + warmup, t0 + warmup + duration
    tasks = []

    async def one(scheduled: float) -> None:
        status = await send(session, target, texts.take(per_request), timeout)
        if scheduled >= window_start:
            recorder.add(scheduled, time.perf_counter() - scheduled, status)

    i = 0
    while (scheduled := t0 + i / rate) < end:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
        i += 1
    await asyncio.gather(*tasks)
    return recorder, time.perf_counter() - window_start


def summarize(label: str, mode: str, recorder: Recorder, window: float, per_request: int,
              **extra: Any) -> dict[str, Any]:
    """One level's numbers: counts (ok + errors by status = requests), rates and percentiles."""
    ok = [lat for _, lat, status in recorder.records if status == "ok"]
    errors: dict[str, int] = {}
    for _, _, status in recorder.records:
        if status != "ok":
            errors[status] = errors.get(status, 0) + 1
    window = max(window, 1e-9)
    return {"label": label, "mode": mode, **extra, "requests": len(recorder.records), "ok": len(ok),
            "errors": errors, "window_s": window, "requests_per_s": len(ok) / window,
            "texts_per_s": len(ok) * per_request / window, **summarize_latencies(ok)}


async def single_requests(session, target: Target, texts: TextCycle, count: int,
                          timeout: float) -> tuple[Recorder, float]:
    """``count`` one-text requests, one after another."""
    recorder = Recorder()
    t0 = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        status = await send(session, target, texts.take(1), timeout)
        recorder.add(start, time.perf_counter() - start, status)
    return recorder, time.perf_counter() - t0


async def probe(session, target: Target, url: str, timeout: float, busy_s: float = 30.0) -> None:
    """One test request before any load; a 503 (the server still working off an earlier load's
    queue, as after a wrk run that hung up on 64 requests in flight) is retried for ``busy_s``,
    as a client honouring Retry-After would."""
    deadline = time.perf_counter() + busy_s
    status = await send(session, target, ["probe"], timeout)
    while status == "503" and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        status = await send(session, target, ["probe"], timeout)
    if status == "connection_error":
        raise BadInputError(f"nothing answers at {url}; start the service first (deploykit serve "
                            "ARTIFACT) or fix --url")
    if status != "ok":
        raise BadInputError(f"{target.url} answered a test request with {status}{target.hint}; check --url "
                            "and --protocol")


async def run_levels(cfg: BenchOnlineConfig, texts: list[str], target: Target) -> list[dict[str, Any]]:
    """Single requests, the open-loop level, the closed-loop levels, single requests again: the
    load plan of request/response protocols (each request is ``cfg.texts_per_request`` texts)."""
    import aiohttp

    cycle = TextCycle(texts)
    levels = sorted(int_list(cfg.concurrency))
    per = cfg.texts_per_request
    results = []
    steps = len(levels) + (1 if cfg.rate else 0) + (2 if cfg.single_requests else 0)
    # One connection per client (keep-alive), as a real client pool would hold.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=client.headers()) as session:
        await probe(session, target, cfg.url, cfg.timeout)
        with progress_bar(total=steps, desc="load levels", unit="level") as bar:
            if cfg.single_requests:
                rec, window = await single_requests(session, target, cycle, cfg.single_requests, cfg.timeout)
                results.append(summarize("single, before load", "single", rec, window, 1, phase="before"))
                bar.update(1)
            if cfg.rate:
                bar.set_postfix_str(f"open loop {cfg.rate:g} req/s")
                rec, window = await open_loop(session, target, cycle, per, cfg.rate, cfg.warmup,
                                              cfg.duration, cfg.timeout)
                results.append(summarize(f"open loop {cfg.rate:g} req/s", "open", rec, window, per, rate=cfg.rate))
                bar.update(1)
            for concurrency in levels:
                bar.set_postfix_str(f"concurrency {concurrency}")
                rec, window = await closed_loop(session, target, cycle, per, concurrency, cfg.warmup,
                                                cfg.duration, cfg.timeout)
                results.append(summarize(f"concurrency {concurrency}", "closed", rec, window, per,
                                         concurrency=concurrency))
                bar.update(1)
            if cfg.single_requests:
                rec, window = await single_requests(session, target, cycle, cfg.single_requests, cfg.timeout)
                results.append(summarize(f"single, right after concurrency {levels[-1]}", "single", rec,
                                         window, 1, phase="after"))
                bar.update(1)
    return results


def run(cfg: BenchOnlineConfig) -> Path:
    """Load-test a running service with the load generator of ``--protocol``'s task and write its
    results (results.json, results.md, plots) to ``cfg.out``.

    Args:
        cfg: The benchmark's settings.

    Returns:
        The output folder.

    Raises:
        BadInputError: Non-loopback URL without ``allow_remote``, nothing listening, a wrong
            route or model name, or unreadable ``--data`` (exit 2).
    """
    # The machine note (load average) before this run's own work raises it.
    machine = report.machine()
    check_target(cfg)
    online: Online = tasks.of_protocol(cfg.protocol).part("bench").Online(cfg)
    texts = online.texts()
    started = time.time()
    levels = asyncio.run(online.levels(texts))
    results = {"kind": online.kind, "target": cfg.url, "protocol": cfg.protocol, **online.facts(),
               "config": to_dict(cfg), "machine": machine, "started": started, "wall_s": time.time() - started,
               "levels": levels}
    out = Path(cfg.out)
    online.write(out, results)
    log.info("online benchmark written to %s", out)
    return out

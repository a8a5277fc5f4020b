"""``deploykit bench online``: an asyncio load generator against a running service.

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
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from deploykit.bench import report
from deploykit.bench.inputs import sample_texts
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


class Target:
    """How to send ``texts`` to the service in one request and check the answer.

    Args:
        cfg: The benchmark's settings (URL, protocol, model name).
    """

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        base = cfg.url.rstrip("/")
        self.protocol = cfg.protocol
        self.url = (f"{base}/classify" if cfg.protocol == "classify"
                    else f"{base}/v2/models/{cfg.model}/infer")

    def body(self, texts: list[str]) -> dict[str, Any]:
        if self.protocol == "classify":
            return {"texts": texts}
        # Shape [n, 1]: what both deploykit's v2 route and a Triton model with dims [1] take.
        return {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}

    def valid(self, answer: Any, n: int) -> bool:
        """Whether a 200 answer holds one result per text."""
        if self.protocol == "classify":
            return isinstance(answer, list) and len(answer) == n
        outputs = {o.get("name"): o for o in (answer or {}).get("outputs", [])} if isinstance(answer, dict) else {}
        label = outputs.get("LABEL")
        return label is not None and label.get("shape", [0])[0] == n


class Recorder:
    """Outcomes of one level: (start, latency, status) per request; status "ok" or an error name."""

    def __init__(self) -> None:
        self.records: list[tuple[float, float, str]] = []

    def add(self, start: float, latency: float, status: str) -> None:
        self.records.append((start, latency, status))


async def _send(session, target: Target, texts: list[str], timeout: float) -> str:
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
            status = await _send(session, target, texts.take(per_request), timeout)
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
        status = await _send(session, target, texts.take(per_request), timeout)
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
        status = await _send(session, target, texts.take(1), timeout)
        recorder.add(start, time.perf_counter() - start, status)
    return recorder, time.perf_counter() - t0


async def _probe(session, target: Target, url: str, timeout: float, busy_s: float = 30.0) -> None:
    """One test request before any load; a 503 (the server still working off an earlier load's
    queue, as after a wrk run that hung up on 64 requests in flight) is retried for ``busy_s``,
    as a client honouring Retry-After would."""
    deadline = time.perf_counter() + busy_s
    status = await _send(session, target, ["probe"], timeout)
    while status == "503" and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        status = await _send(session, target, ["probe"], timeout)
    if status == "connection_error":
        raise BadInputError(f"nothing answers at {url}; start the service first (deploykit serve "
                            "ARTIFACT) or fix --url")
    if status != "ok":
        hint = " (check --model: the served model's name)" if target.protocol == "v2" else ""
        raise BadInputError(f"{target.url} answered a test request with {status}{hint}; check --url "
                            "and --protocol")


async def run_levels(cfg: BenchOnlineConfig, texts: list[str]) -> list[dict[str, Any]]:
    """Single requests, the open-loop level, the closed-loop levels, single requests again."""
    import aiohttp

    target, cycle = Target(cfg), TextCycle(texts)
    levels = sorted(int_list(cfg.concurrency))
    per = cfg.texts_per_request
    results = []
    steps = len(levels) + (1 if cfg.rate else 0) + (2 if cfg.single_requests else 0)
    # One connection per client (keep-alive), as a real client pool would hold.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _probe(session, target, cfg.url, cfg.timeout)
        with tqdm(total=steps, desc="load levels", unit="level") as bar:
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
    """Load-test a running service and write results.json, results.md and a plot to ``cfg.out``.

    Args:
        cfg: The benchmark's settings.

    Returns:
        The output folder.

    Raises:
        BadInputError: Non-loopback URL without ``allow_remote``, nothing listening, a wrong
            route or model name, or unreadable ``--data`` (exit 2).
    """
    if cfg.protocol == "generate":
        from deploykit.bench import online_generation

        return online_generation.run(cfg)
    # The machine note (load average) before this run's own work raises it.
    machine = report.machine()
    check_target(cfg)
    texts = sample_texts(cfg.data, cfg.text_column, cfg.samples, cfg.seed)
    started = time.time()
    levels = asyncio.run(run_levels(cfg, texts))
    results = {"kind": "online", "target": cfg.url, "protocol": cfg.protocol,
               "model": cfg.model if cfg.protocol == "v2" else None, "config": to_dict(cfg),
               "machine": machine, "started": started, "wall_s": time.time() - started,
               "levels": levels}
    out = Path(cfg.out)
    report.write(out, results)
    log.info("online benchmark written to %s", out)
    return out

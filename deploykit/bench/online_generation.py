"""``deploykit bench online --protocol generate``: concurrent streaming clients against a
text-generation service.

At concurrency C, C clients each stream ``POST /generate`` (server-sent events) and send the
next request when the last event arrived (closed loop, bounded in time per level). Per request:
time to first token (first event), its tokens (the final event's usage) and duration; per level:
TTFT and inter-token percentiles, tokens/s per client (each request's tokens over its duration)
and in total (every token of the window over the window).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from deploykit.bench import report
from deploykit.bench.inputs import sample_texts
from deploykit.bench.online import check_target
from deploykit.bench.stats import summarize_latencies
from deploykit.config import BenchOnlineConfig, int_list, to_dict
from deploykit.errors import BadInputError

log = logging.getLogger(__name__)


async def stream_one(session: Any, url: str, prompt: str, new_tokens: int, timeout: float) -> dict[str, Any]:
    """One streamed generation: ``{"status", "ttft_s", "tokens", "duration_s"}``."""
    import aiohttp

    start = time.perf_counter()
    first = None
    body = {"prompt": prompt, "max_new_tokens": new_tokens, "stream": True, "ignore_eos": True}
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                await resp.read()
                return {"status": str(resp.status)}
            last: dict[str, Any] = {}
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if first is None:
                    first = time.perf_counter()
                last = json.loads(line[6:])
            tokens = (last.get("usage") or {}).get("completion_tokens")
            if tokens is None:
                return {"status": "truncated_stream"}
            return {"status": "ok", "ttft_s": first - start, "tokens": tokens,
                    "duration_s": time.perf_counter() - start}
    except asyncio.TimeoutError:
        return {"status": "timeout"}
    except aiohttp.ClientError:
        return {"status": "connection_error"}


async def level(session: Any, url: str, prompts: list[str], concurrency: int, cfg: BenchOnlineConfig) -> dict[str, Any]:
    """One closed-loop level: ``concurrency`` streaming clients for ``cfg.duration`` seconds."""
    records: list[tuple[float, dict[str, Any]]] = []
    t0 = time.perf_counter()
    window_start, end = t0 + cfg.warmup, t0 + cfg.warmup + cfg.duration
    counter = iter(range(1 << 30))

    async def client() -> None:
        while (start := time.perf_counter()) < end:
            result = await stream_one(session, url, prompts[next(counter) % len(prompts)], cfg.new_tokens, cfg.timeout)
            if start >= window_start:
                records.append((start, result))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    window = max(time.perf_counter() - window_start, 1e-9)
    ok = [r for _, r in records if r["status"] == "ok"]
    errors: dict[str, int] = {}
    for _, r in records:
        if r["status"] != "ok":
            errors[r["status"]] = errors.get(r["status"], 0) + 1
    ttft = summarize_latencies([r["ttft_s"] for r in ok])
    itl = summarize_latencies([(r["duration_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1])
    per_client = [r["tokens"] / r["duration_s"] for r in ok]
    return {"label": f"concurrency {concurrency}", "concurrency": concurrency, "requests": len(records),
            "ok": len(ok), "errors": errors, "window_s": window,
            "ttft_p50_ms": ttft["p50_ms"], "ttft_p95_ms": ttft["p95_ms"],
            "itl_p50_ms": itl["p50_ms"], "itl_p95_ms": itl["p95_ms"],
            "tokens_per_s_per_client": sum(per_client) / len(per_client) if per_client else 0.0,
            "tokens_per_s_total": sum(r["tokens"] for r in ok) / window}


async def run_levels(cfg: BenchOnlineConfig, prompts: list[str]) -> list[dict[str, Any]]:
    import aiohttp

    url = cfg.url.rstrip("/") + "/generate"
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        probe = await stream_one(session, url, "probe", 2, cfg.timeout)
        if probe["status"] != "ok":
            raise BadInputError(f"{url} answered a test generation with {probe['status']}; start 'deploykit serve' "
                                "on a text-generation artifact, or fix --url")
        for concurrency in tqdm(sorted(int_list(cfg.concurrency)), desc="load levels", unit="level"):
            results.append(await level(session, url, prompts, concurrency, cfg))
    return results


def run(cfg: BenchOnlineConfig) -> Path:
    """Load-test a text-generation service; writes results.json and results.md to ``cfg.out``.

    Raises:
        BadInputError: Non-loopback URL without ``allow_remote``, nothing (or no generation
            service) listening, unreadable ``--data``.
    """
    # The machine note (load average) before this run's own work raises it.
    machine = report.machine()
    check_target(cfg)
    prompts = sample_texts(cfg.data, cfg.text_column, cfg.samples, cfg.seed)
    started = time.time()
    levels = asyncio.run(run_levels(cfg, prompts))
    results = {"kind": "online-generation", "target": cfg.url, "new_tokens": cfg.new_tokens, "config": to_dict(cfg),
               "machine": machine, "started": started, "wall_s": time.time() - started, "levels": levels}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Online generation benchmark: {cfg.url}", "",
             f"Streaming clients (closed loop), {cfg.new_tokens} new tokens per request (EOS ignored), "
             f"{cfg.duration:g} s per level.", "", report.machine_markdown(results["machine"]),
             "| concurrency | requests ok | errors | TTFT p50 ms | TTFT p95 ms | inter-token p50 ms | "
             "tokens/s per client | tokens/s total |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in levels:
        lines.append(f"| {r['concurrency']} | {r['ok']} | {r['errors'] or '-'} | {r['ttft_p50_ms']:.1f} | "
                     f"{r['ttft_p95_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['tokens_per_s_per_client']:.1f} | "
                     f"{r['tokens_per_s_total']:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    log.info("online generation benchmark written to %s", out)
    return out

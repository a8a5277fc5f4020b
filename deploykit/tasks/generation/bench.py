"""text-generation's benchmarks: time to first token, inter-token latency and generated tokens/s
per engine and batch size (offline), and concurrent streaming clients (online, ``--protocol
generate``).

Offline engines (each in its own process, ``deploykit.bench.engines``):

- ``pytorch``: transformers ``generate`` on the checkpoint (greedy, its KV cache);
- ``optimum``: Optimum's ``ORTModelForCausalLM.generate`` on the default variant's ONNX file;
- ``runtime``: deploykit's ``Generator`` (its scheduler), once per variant.

Every call generates exactly ``--new-tokens`` tokens (EOS ignored) for a batch of prompts of
exactly ``--prompt-tokens`` tokens (seeded random ids: speed does not depend on which). A
step-level clock gives TTFT (the prompt's forward pass and first token, for the whole batch) and
the inter-token latency (mean gap between the later steps); tokens/s counts new tokens of the
whole batch over the whole call.

Online: at concurrency C, C clients each stream ``POST /generate`` (server-sent events) and send
the next request when the last event arrived (closed loop, bounded in time per level). Per
request: time to first token (first event), its tokens (the final event's usage) and duration;
per level: TTFT and inter-token percentiles, tokens/s per client (each request's tokens over its
duration) and in total (every token of the window over the window).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from deploykit.progress import bar as progress_bar

from deploykit.bench.inputs import sample_texts
from deploykit.bench import client
from deploykit.bench.report import machine_markdown
from deploykit.bench.stats import summarize_latencies
from deploykit.config import BenchOfflineConfig, BenchOnlineConfig, int_list
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.tasks.generation.head import Generation
from deploykit.tasks.generation.runtime import Generator, Sampling

log = logging.getLogger(__name__)

# A call takes prompts (token ids) and returns the step times: [start, first token, ..., last token].
Call = Callable[[list[list[int]], int], list[float]]


# --- offline ---------------------------------------------------------------------------------

class Offline:
    """The decoder's offline benchmark (see ``deploykit.bench.offline.Offline``)."""

    kind = "offline-generation"
    ratio = ("tokens_per_s", "tokens_per_s_vs_pytorch")

    def __init__(self, cfg: BenchOfflineConfig, manifest: Manifest) -> None:
        self.cfg, self.head = cfg, manifest.head_as(Generation)
        self.max_length = manifest.max_length
        self.batches = int_list(cfg.generation_batch_sizes)
        self.max_batch = max(self.batches)

    def input_sets(self) -> dict[str, dict[str, Any]]:
        """One set of seeded random prompts of exactly ``--prompt-tokens`` ids (no special ids)."""
        head = self.head
        prompts = prompts_for(head.vocab_size, self.cfg.prompt_tokens, self.max_batch * 2, self.cfg.seed,
                              {*head.eos_token_ids, head.pad_token_id, head.bos_token_id or 0})
        return {"prompts": {"texts": prompts, "batch_sizes": self.batches}}

    def engine(self, engine: str, common: dict[str, Any], checkpoint: str | None, out: Path) -> dict[str, dict[str, Any]]:
        raise BadInputError(f"--engines {engine} has no text-generation engine; use pytorch, optimum and runtime")

    def message(self) -> dict[str, Any]:
        return {"new_tokens": self.cfg.new_tokens}

    def spec(self) -> dict[str, Any]:
        return {"pad": self.head.pad_token_id}  # what PyTorch's and Optimum's generate pad with

    def facts(self) -> dict[str, Any]:
        return {"prompt_tokens": self.cfg.prompt_tokens, "new_tokens": self.cfg.new_tokens}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown(results))


def _torch_streamer():
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):
        """generate() calls put() with the prompt, then once per step: the step clock."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    return StepClock


def _hf_generate(model: Any, spec: dict[str, Any]) -> Call:
    import torch

    clock = _torch_streamer()

    def call(prompts: list[list[int]], new_tokens: int) -> list[float]:
        ids = torch.tensor(prompts)
        streamer = clock()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=spec["pad"], streamer=streamer)
        return [start] + streamer.times[1:]  # times[0] is the prompt being put, before any work

    return call


def _pytorch(spec: dict[str, Any]) -> Call:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(spec["threads"])
    return _hf_generate(AutoModelForCausalLM.from_pretrained(spec["checkpoint"]).eval(), spec)


def _optimum(spec: dict[str, Any]) -> Call:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]  # the rest is Optimum's own defaults
    model = ORTModelForCausalLM.from_pretrained(spec["artifact"], file_name=spec["file"], use_cache=True,
                                                provider="CPUExecutionProvider", session_options=options)
    return _hf_generate(model, spec)


def _runtime(spec: dict[str, Any]) -> Call:
    generator = Generator(spec["artifact"], spec["variant"], threads=spec["threads"],
                          max_batch_size=spec["max_batch_size"], max_cache_tokens=1 << 30,
                          spin=True)  # one caller, steps back to back: the Generator's ``spin``

    def call(prompts: list[list[int]], new_tokens: int) -> list[float]:
        scheduler = generator.scheduler()
        for p in prompts:
            scheduler.submit(p, Sampling(max_new_tokens=new_tokens, ignore_eos=True))
        times = [time.perf_counter()]
        while scheduler.busy:
            scheduler.step()
            times.append(time.perf_counter())
        return times

    return call


ENGINES: dict[str, Callable[[dict[str, Any]], Call]] = {"pytorch": _pytorch, "optimum": _optimum,
                                                        "runtime": _runtime}


def prompts_for(vocab: int, length: int, count: int, seed: int, avoid: set[int]) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` seeded random token ids (no special ids)."""
    rng = np.random.default_rng(seed)
    choices = np.array([t for t in range(vocab) if t not in avoid])
    return [rng.choice(choices, size=length).tolist() for _ in range(count)]


def measure(call: Call, prompts: list[list[int]], msg: dict[str, Any]) -> dict[str, Any]:
    """Time one (batch, new tokens) cell: TTFT, inter-token latency and tokens/s."""
    batch, new_tokens, warmup = msg["batch"], msg["new_tokens"], msg["warmup"]
    min_iters, min_duration, max_iters = msg["min_iters"], msg["min_duration"], msg["max_iters"]

    def chunk(i: int) -> list[list[int]]:
        start = (i * batch) % len(prompts)
        return (prompts[start:] + prompts[:start])[:batch]

    for i in range(warmup):
        call(chunk(i), new_tokens)
    ttft, itl, walls = [], [], []
    begin = time.perf_counter()
    i = 0
    while True:
        times = call(chunk(warmup + i), new_tokens)
        ttft.append(times[1] - times[0])
        itl += list(np.diff(times[1:]))
        walls.append(times[-1] - times[0])
        i += 1
        elapsed = time.perf_counter() - begin
        if (i >= min_iters and elapsed >= min_duration) or i >= max_iters:
            break
    ttft_ms = summarize_latencies(ttft)
    itl_ms = summarize_latencies(itl)
    return {"iters": i, "ttft_p50_ms": ttft_ms["p50_ms"], "ttft_p95_ms": ttft_ms["p95_ms"],
            "itl_p50_ms": itl_ms["p50_ms"], "itl_p95_ms": itl_ms["p95_ms"], "itl_mean_ms": itl_ms["mean_ms"],
            "tokens_per_s": batch * new_tokens * i / sum(walls)}


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table per batch size."""
    lines = [f"# Offline generation benchmark: {results['model']}", "",
             f"Prompts of {results['prompt_tokens']} tokens, {results['new_tokens']} new tokens per sequence "
             "(EOS ignored), greedy; each engine in its own process.", "", machine_markdown(results["machine"]),
             "| batch | engine | TTFT p50 ms | inter-token p50 ms | tokens/s | x PyTorch | peak RSS MiB |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for c in sorted(results["cells"], key=lambda c: (c["batch_size"], c["engine"])):
        ratio = c.get("tokens_per_s_vs_pytorch")
        lines.append(f"| {c['batch_size']} | {c['engine']} | {c['ttft_p50_ms']:.1f} | {c['itl_p50_ms']:.1f} | "
                     f"{c['tokens_per_s']:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} | {c['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


# --- online ----------------------------------------------------------------------------------

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
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=client.headers()) as session:
        probe = await stream_one(session, url, "probe", 2, cfg.timeout)
        if probe["status"] != "ok":
            raise BadInputError(f"{url} answered a test generation with {probe['status']}; start 'deploykit serve' "
                                "on a text-generation artifact, or fix --url")
        for concurrency in progress_bar(sorted(int_list(cfg.concurrency)), desc="load levels", unit="level"):
            results.append(await level(session, url, prompts, concurrency, cfg))
    return results


class Online:
    """The decoder's load generator (see ``deploykit.bench.online.Online``): streaming clients."""

    kind = "online-generation"

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        self.cfg = cfg

    def texts(self) -> list[str]:
        """A seeded sample of ``--data``'s ``--text-column``."""
        cfg = self.cfg
        return sample_texts(cfg.data, cfg.text_column, cfg.samples, cfg.seed)

    async def levels(self, texts: list[str]) -> list[dict[str, Any]]:
        return await run_levels(self.cfg, texts)

    def facts(self) -> dict[str, Any]:
        return {"new_tokens": self.cfg.new_tokens}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        cfg, levels = self.cfg, results["levels"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        lines = [f"# Online generation benchmark: {cfg.url}", "",
                 f"Streaming clients (closed loop), {cfg.new_tokens} new tokens per request (EOS ignored), "
                 f"{cfg.duration:g} s per level.", "", machine_markdown(results["machine"]),
                 "| concurrency | requests ok | errors | TTFT p50 ms | TTFT p95 ms | inter-token p50 ms | "
                 "tokens/s per client | tokens/s total |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in levels:
            lines.append(f"| {r['concurrency']} | {r['ok']} | {r['errors'] or '-'} | {r['ttft_p50_ms']:.1f} | "
                         f"{r['ttft_p95_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['tokens_per_s_per_client']:.1f} | "
                         f"{r['tokens_per_s_total']:.1f} |")
        (out / "results.md").write_text("\n".join(lines) + "\n")

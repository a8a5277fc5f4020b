"""``deploykit bench offline`` on a text-generation artifact: time to first token, inter-token
latency and generated tokens/s per engine and batch size.

Engines (each in its own process, as the classifier's; see ``deploykit.bench.offline``):

- ``pytorch``: transformers ``generate`` on the checkpoint (greedy, its KV cache);
- ``optimum``: Optimum's ``ORTModelForCausalLM.generate`` on the default variant's ONNX file;
- ``runtime``: deploykit's ``Generator`` (its scheduler), once per variant.

Every call generates exactly ``--new-tokens`` tokens (EOS ignored) for a batch of prompts of
exactly ``--prompt-tokens`` tokens (seeded random ids: speed does not depend on which). A
step-level clock gives TTFT (the prompt's forward pass and first token, for the whole batch) and
the inter-token latency (mean gap between the later steps); tokens/s counts new tokens of the
whole batch over the whole call. Run it with ``python -m deploykit.bench.generation SPEC``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploykit.bench.engines import peak_rss_mb
from deploykit.bench.stats import summarize_latencies
from deploykit.errors import BadInputError

log = logging.getLogger("deploykit.bench.generation")

# A call takes prompts (token ids) and returns the step times: [start, first token, ..., last token].
Call = Callable[[list[list[int]], int], list[float]]


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
    from deploykit.tasks.generation.runtime import Generator, Sampling

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


BUILDERS: dict[str, Callable[[dict[str, Any]], Call]] = {"pytorch": _pytorch, "optimum": _optimum,
                                                         "runtime": _runtime}


def prompts_for(vocab: int, length: int, count: int, seed: int, avoid: set[int]) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` seeded random token ids (no special ids)."""
    rng = np.random.default_rng(seed)
    choices = np.array([t for t in range(vocab) if t not in avoid])
    return [rng.choice(choices, size=length).tolist() for _ in range(count)]


def measure(call: Call, prompts: list[list[int]], batch: int, new_tokens: int, *, warmup: int, min_iters: int,
            min_duration: float, max_iters: int) -> dict[str, Any]:
    """Time one (batch, new tokens) cell: TTFT, inter-token latency and tokens/s."""
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
            "tokens_per_s": batch * new_tokens * i / sum(walls), "peak_rss_mb": peak_rss_mb()}


def serve(spec: dict[str, Any], requests, replies) -> None:
    """Load the engine ``spec`` names, then answer JSON-line requests until ``exit``."""
    t0 = time.perf_counter()
    call = BUILDERS[spec["kind"]](spec)
    replies.write(json.dumps({"ready": True, "load_s": time.perf_counter() - t0,
                              "rss_after_load_mb": peak_rss_mb()}) + "\n")
    replies.flush()
    prompts: dict[str, list[list[int]]] = {}
    for line in requests:
        msg = json.loads(line)
        if msg["op"] == "exit":
            break
        if msg["op"] == "texts":  # the parent's input sets: here, token-id prompts
            prompts[msg["name"]] = msg["texts"]
            reply: dict[str, Any] = {"ok": True}
        elif msg["op"] == "bench":
            reply = measure(call, prompts[msg["name"]], msg["batch"], msg["new_tokens"], warmup=msg["warmup"],
                            min_iters=msg["min_iters"], min_duration=msg["min_duration"],
                            max_iters=msg["max_iters"])
        else:
            reply = {"error": f"unknown op {msg['op']!r}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def run(cfg: Any, manifest: Any, machine: dict[str, Any]) -> Path:
    """The offline benchmark of a text-generation artifact (``deploykit bench offline``).

    Args:
        cfg: The ``BenchOfflineConfig``.
        manifest: The verified manifest.
        machine: ``report.machine()`` taken before the run began (its load average).

    Returns:
        The output folder (results.json, results.md).
    """
    from tqdm import tqdm

    from deploykit.bench.offline import EngineProcess, engine_specs
    from deploykit.config import int_list, to_dict

    from deploykit.tasks.generation.head import Generation

    head = manifest.head_as(Generation)
    batches = int_list(cfg.generation_batch_sizes)
    prompts = prompts_for(head.vocab_size, cfg.prompt_tokens, max(batches) * 2, cfg.seed,
                          {*head.eos_token_ids, head.pad_token_id, head.bos_token_id or 0})
    if "optimum-quantized" in cfg.engine_list:
        raise BadInputError("--engines optimum-quantized quantizes a classifier with Optimum; for a "
                            "text-generation artifact use pytorch, optimum and runtime")
    out = Path(cfg.out)
    specs = engine_specs(cfg, manifest, manifest.max_length, max(batches), out)
    for spec in specs.values():
        spec["pad"] = head.pad_token_id
    (out / "logs").mkdir(parents=True, exist_ok=True)
    engines: dict[str, EngineProcess] = {}
    cells: list[dict[str, Any]] = []
    started = time.time()
    try:
        for name, spec in specs.items():
            engines[name] = EngineProcess(name, spec, out / "logs", module="deploykit.bench.generation")
        for name in tqdm(engines, desc="loading engines", unit="engine"):
            engines[name].wait_ready()
            engines[name].ask({"op": "texts", "name": "prompts", "texts": prompts})
        names = list(engines)
        with tqdm(total=len(batches) * len(names), desc="benchmark", unit="run") as bar:
            for index, batch in enumerate(batches):
                order = names[index % len(names):] + names[:index % len(names)]  # no engine always first
                for name in order:
                    result = engines[name].ask({"op": "bench", "name": "prompts", "batch": batch,
                                                "new_tokens": cfg.new_tokens, "warmup": cfg.warmup,
                                                "min_iters": cfg.min_iters, "min_duration": cfg.min_duration,
                                                "max_iters": cfg.max_iters})
                    cells.append({"batch_size": batch, "engine": name, **result})
                    bar.update(1)
    finally:
        for engine in engines.values():
            engine.close()
    base = {c["batch_size"]: c["tokens_per_s"] for c in cells if c["engine"] == "pytorch"}
    for c in cells:
        c["tokens_per_s_vs_pytorch"] = c["tokens_per_s"] / base[c["batch_size"]] if c["batch_size"] in base else None
    results = {"kind": "offline-generation", "artifact": str(Path(cfg.artifact).resolve()), "model": manifest.name,
               "config": to_dict(cfg), "prompt_tokens": cfg.prompt_tokens, "new_tokens": cfg.new_tokens,
               "engines": {n: e.ready for n, e in engines.items()}, "machine": machine,
               "started": started, "wall_s": time.time() - started, "cells": cells}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    log.info("offline generation benchmark written to %s", out)
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table per batch size."""
    from deploykit.bench.report import machine_markdown

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


if __name__ == "__main__":
    from deploykit.bench.engines import main

    main(serve)

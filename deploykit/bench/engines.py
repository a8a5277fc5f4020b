"""One benchmark engine per process: ``python -m deploykit.bench.engines SPEC_JSON``.

The offline benchmark starts one of these per engine so that each engine's peak memory is its
own (a process's peak RSS only grows) and no engine's threads or allocator state leak into
another's timings. The parent speaks JSON lines over stdin/stdout: ``texts`` loads an input
set, ``bench`` times one (input set, batch size) cell, ``exit`` ends the process.

Engines (all take texts and return logits, tokenization included, as a user's code would):

- ``pytorch``: transformers' ``AutoModelForSequenceClassification`` on the checkpoint, eager,
  under ``torch.inference_mode()``.
- ``optimum``: Optimum's ``ORTModelForSequenceClassification`` on an ONNX file (of the artifact,
  or, for ``optimum-quantized``, Optimum's own INT8 of the checkpoint: ``optimum_quantized``),
  with the transformers fast tokenizer (what a user of Optimum would write).
- ``runtime``: deploykit's ``Runtime`` on one variant of the artifact.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from deploykit.bench.stats import summarize_latencies, time_calls

log = logging.getLogger("deploykit.bench.engines")

# A call takes a batch of texts and returns how many (unpadded) tokens it ran.
Call = Callable[[Sequence[str]], int]


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across fork and exec, so every engine
    process started by a parent that had loaded PyTorch (to build ``optimum-quantized``) reported
    the parent's 1,469 MiB. ``VmHWM`` starts anew with the address space ``exec`` creates.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: bytes on macOS, KiB elsewhere
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _hf_tokenizer(spec: dict[str, Any]):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.get("checkpoint"):
        return AutoTokenizer.from_pretrained(spec["checkpoint"])
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["artifact"]) / "tokenizer.json"))


def _pytorch(spec: dict[str, Any]) -> Call:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec["threads"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["checkpoint"]).eval()
    tokenizer = _hf_tokenizer(spec)
    max_length = spec["max_length"]

    def call(texts: Sequence[str]) -> int:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.inference_mode():
            model(**enc).logits.numpy()
        return int(enc["attention_mask"].sum())

    return call


def _optimum(spec: dict[str, Any]) -> Call:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification

    options = ort.SessionOptions()
    # Same thread count as every other engine; the rest is Optimum's own defaults.
    options.intra_op_num_threads = spec["threads"]
    model = ORTModelForSequenceClassification.from_pretrained(
        spec["artifact"], file_name=spec["file"], provider="CPUExecutionProvider",
        session_options=options)
    tokenizer = _hf_tokenizer(spec)
    max_length = spec["max_length"]

    def call(texts: Sequence[str]) -> int:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        if "token_type_ids" not in model.input_names:
            enc.pop("token_type_ids", None)
        model(**enc).logits.numpy()
        return int(enc["attention_mask"].sum())

    return call


def _runtime(spec: dict[str, Any]) -> Call:
    from deploykit.tasks.classification.runtime import Runtime

    # The benchmark is a single caller calling back to back, like Optimum's session (which
    # spins by onnxruntime's default): the runtime's single-caller setting (Runtime's ``spin``).
    runtime = Runtime(spec["artifact"], spec["variant"], threads=spec["threads"],
                      max_batch_size=spec["max_batch_size"], spin=True)
    # The synthetic long inputs may exceed the manifest's max_length; every engine truncates at
    # the same length so that all of them compute the same tokens.
    runtime.max_length = spec["max_length"]
    runtime.tokenizer.enable_truncation(spec["max_length"])

    def call(texts: Sequence[str]) -> int:
        rows = runtime.tokenize(texts)
        runtime.logits_of(rows)
        return sum(r.length for r in rows)

    return call


BUILDERS: dict[str, Callable[[dict[str, Any]], Call]] = {
    "pytorch": _pytorch, "optimum": _optimum, "runtime": _runtime}


def serve(spec: dict[str, Any], requests, replies) -> None:
    """Load the engine ``spec`` names, then answer JSON-line requests until ``exit``."""
    t0 = time.perf_counter()
    call = BUILDERS[spec["kind"]](spec)
    ready = {"ready": True, "load_s": time.perf_counter() - t0, "rss_after_load_mb": peak_rss_mb()}
    replies.write(json.dumps(ready) + "\n")
    replies.flush()
    inputs: dict[str, list[str]] = {}
    for line in requests:
        msg = json.loads(line)
        if msg["op"] == "exit":
            break
        if msg["op"] == "texts":
            inputs[msg["name"]] = msg["texts"]
            reply: dict[str, Any] = {"ok": True}
        elif msg["op"] == "bench":
            texts, batch = inputs[msg["name"]], msg["batch"]

            def one(i: int, texts=texts, batch=batch) -> int:
                # Consecutive, wrapping slices: every call sees fresh texts of the set.
                start = (i * batch) % len(texts)
                chunk = (texts[start:] + texts[:start])[:batch]
                if len(chunk) < batch:  # a pool smaller than the batch repeats itself
                    chunk = (chunk * (batch // max(1, len(chunk)) + 1))[:batch]
                return call(chunk)

            latencies, tokens, wall = time_calls(
                one, warmup=msg["warmup"], min_iters=msg["min_iters"],
                min_duration=msg["min_duration"], max_iters=msg.get("max_iters"))
            reply = {**summarize_latencies(latencies), "iters": len(latencies),
                     "texts_per_s": len(latencies) * batch / wall, "tokens_per_s": tokens / wall,
                     "wall_s": wall, "peak_rss_mb": peak_rss_mb()}
        else:
            reply = {"error": f"unknown op {msg['op']!r}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(serve_fn: Callable[..., None] | None = None) -> None:
    """Entry point of the engine subprocess; the protocol uses a private copy of stdout.

    Args:
        serve_fn: The request loop (default ``serve``; the generation benchmark passes its own).
    """
    # Libraries may print to stdout; keep the protocol channel clean by pointing fd 1 at stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    (serve_fn or serve)(json.loads(sys.argv[1]), sys.stdin, replies)


if __name__ == "__main__":
    main()

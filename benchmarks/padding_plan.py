"""Why bigger batches are slower here, and what a padding-aware batch plan recovers.

MiniLM on a 2-core CPU is compute-bound even at batch 1, so batching buys little, while
padding every row to the batch's longest costs a lot on tweets (mean 33 tokens, max 125):
``Runtime.plan`` cuts length-sorted rows only by ``max_batch_size``/``max_batch_tokens``, so
a batch of 64 random tweets runs as one call padded to its longest row. This script times,
side by side in one process and alternating, the runtime with its own plan and with a plan
that splits the sorted rows where it pays (dynamic programming over the sorted lengths:
minimise sum(rows x width) + a fixed per-call cost; now ``Runtime.plan`` itself), on the same
batches. "default" below is the former budget-only plan.

    python3 benchmarks/padding_plan.py --artifact runs/art [--variant int8] [--batches 8,32,64]

The fix lives in ``deploykit/runtime.py`` (``Runtime.plan``), which the service's batcher and
the Triton Python model share.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit.bench.inputs import sample_texts  # noqa: E402
from deploykit.runtime import Runtime  # noqa: E402


def budget_only_plan(self, rows):
    """The runtime's former plan: sorted rows cut only by max_batch_size / max_batch_tokens."""
    order = sorted(range(len(rows)), key=lambda i: rows[i].length, reverse=True)
    batch, width = [], 0
    for i in order:
        width = width or rows[i].length
        if batch and (len(batch) + 1 > self.max_batch_size or (len(batch) + 1) * width > self.max_batch_tokens):
            yield batch
            batch, width = [], rows[i].length
        batch.append(i)
    if batch:
        yield batch


def efficiency(runtime, rows) -> float:
    real = sum(r.length for r in rows)
    padded = sum(len(b) * max(rows[i].length for i in b) for b in runtime.plan(rows))
    return real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    texts = sample_texts("tweets", "text", 2048, 0)
    default = Runtime(args.artifact, args.variant, max_batch_size=256)
    default.plan = types.MethodType(budget_only_plan, default)
    aware = Runtime(args.artifact, args.variant, max_batch_size=256)  # Runtime.plan: padding-aware
    results = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        times = {"default": 0.0, "padding-aware": 0.0}
        eff = {"default": [], "padding-aware": []}
        for r in range(args.rounds):
            chunk = texts[r * batch:(r + 1) * batch]
            pairs = [("default", default), ("padding-aware", aware)]
            for name, rt in (pairs if r % 2 == 0 else pairs[::-1]):  # alternate who goes first
                rows = rt.tokenize(chunk)
                eff[name].append(efficiency(rt, rows))
                t0 = time.perf_counter()
                rt.logits_of(rows)
                times[name] += time.perf_counter() - t0
        results[batch] = {name: {"texts_per_s": args.rounds * batch / times[name],
                                 "real_token_share": sum(eff[name]) / len(eff[name])} for name in times}
        d, a = results[batch]["default"], results[batch]["padding-aware"]
        print(f"batch {batch:3d}: default {d['texts_per_s']:7.1f} texts/s ({d['real_token_share']:.0%} real tokens) | "
              f"padding-aware {a['texts_per_s']:7.1f} texts/s ({a['real_token_share']:.0%}) | "
              f"x{a['texts_per_s'] / d['texts_per_s']:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The in-process reference of ``deploykit bench online --protocol generate``: the same prompts
(the seeded tweet sample the online benchmark sends), ``--concurrency`` sequences decoded
together by the runtime's scheduler as the service keeps them (a finished sequence's slot is
refilled at once), 64 new tokens each with EOS ignored, for ``--duration`` seconds.

The service's tokens/s at c streaming clients divided by this figure at the same c is what the
service keeps of the runtime (the generation issue's target: at least 0.7x at c = 8).

    python3 benchmarks/generation_inprocess.py --artifact /tmp/gen-bench/artifact --concurrency 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploykit.bench.inputs import sample_texts  # noqa: E402
from deploykit.bench.report import machine  # noqa: E402
from deploykit.config import BenchOnlineConfig, ServiceConfig  # noqa: E402
from deploykit.tasks.generation.runtime import Generator, Sampling  # noqa: E402


def level(generator: Generator, prompts: list[list[int]], concurrency: int, new_tokens: int,
          duration: float) -> dict:
    """Closed loop in process: ``concurrency`` sequences in flight; tokens/s over ``duration``."""
    scheduler = generator.scheduler(max_batch_size=concurrency)
    sampling = Sampling(max_new_tokens=new_tokens, ignore_eos=True)
    nxt = 0
    for _ in range(concurrency):
        scheduler.submit(prompts[nxt % len(prompts)], sampling)
        nxt += 1
    tokens = finished = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        for event in scheduler.step():
            tokens += event.token is not None
            if event.finished:
                finished += 1
                scheduler.submit(prompts[nxt % len(prompts)], sampling)
                nxt += 1
    seconds = time.perf_counter() - start
    return {"concurrency": concurrency, "tokens": tokens, "sequences_finished": finished, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--out", default=None, help="write results.json here")
    args = parser.parse_args()
    online = BenchOnlineConfig()  # the online benchmark's own sample of prompts
    texts = sample_texts(online.data, online.text_column, online.samples, online.seed)
    note = machine()  # the load average before this run's own work
    # As the service loads it: its threads, and its spin setting for text generation.
    generator = Generator(args.artifact, args.variant, max_batch_size=64, max_cache_tokens=1 << 30,
                          spin=ServiceConfig().spins(True))
    prompts = [generator.encode(t) for t in texts]
    levels = [level(generator, prompts, int(c), args.new_tokens, args.duration) for c in args.concurrency.split(",")]
    result = {"artifact": args.artifact, "variant": generator.variant, "machine": note, "levels": levels}
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

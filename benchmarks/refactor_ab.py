"""Two checkouts of deploykit, interleaved on one artifact: is one of them slower?

Measures the task-registry refactor against the commit before it (or any two checkouts): each
round runs, for both checkouts in alternating order, ``deploykit bench offline`` (deploykit's
runtime on one variant at batch 1 and 32, texts of the data set) and
``benchmarks/serving_compare.py`` (the deploykit service, ``/classify`` and v2 at c=8 and c=32,
the bench and wrk load generators). Each checkout runs its own code: ``PYTHONPATH`` points at it, and its
own copy of the scripts runs. The verdict is the median over rounds of each figure, new / old.

    python3 benchmarks/refactor_ab.py --old /path/to/old-checkout --new . --artifact demo/artifact \\
        [--rounds 5] [--out benchmarks/results/refactor]

Run it alone on a quiet machine (its results file records the load average before every step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (label, how to read it from a step's results, higher is better)
OFFLINE = [("bench offline b=1 texts/s", ("data", 1, "texts_per_s"), True),
           ("bench offline b=1 p50 ms", ("data", 1, "p50_ms"), False),
           ("bench offline b=32 texts/s", ("data", 32, "texts_per_s"), True),
           ("bench offline b=32 p50 ms", ("data", 32, "p50_ms"), False)]
SERVING = [(f"serving {route} {generator} c={c} {key}", f"deploykit {route}|{generator}|1|{c}", key,
            key == "texts_per_s")
           for generator in ("bench", "wrk") for route in ("classify", "v2") for c in (8, 32)
           for key in ("texts_per_s", "p50_ms")]


def run(root: Path, argv: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(root), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DEPLOYKIT_TASKS", None)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(argv)}  (PYTHONPATH={root})\n")
        fh.flush()
        subprocess.run(argv, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def offline(root: Path, artifact: Path, variant: str, out: Path, log: Path) -> dict[str, float]:
    run(root, [sys.executable, "-m", "deploykit", "bench", "offline", str(artifact), "--engines", "runtime",
               "--variants", variant, "--batch-sizes", "1,32", "--synthetic-lengths", "", "--min-duration", "4",
               "--warmup", "3", "--out", str(out)], log)
    cells = json.loads((out / "results.json").read_text())["cells"]
    by = {(c["input"], c["batch_size"]): c for c in cells}
    return {label: by[(s, b)][key] for label, (s, b, key), _ in OFFLINE}


def serving(root: Path, artifact: Path, variant: str, out: Path, log: Path) -> dict[str, float]:
    run(root, [sys.executable, str(root / "benchmarks" / "serving_compare.py"), "--artifact", str(artifact),
               "--variant", variant, "--concurrency", "8,32", "--texts-per-request", "1", "--runs", "1",
               "--systems", "deploykit", "--generators", "bench,wrk", "--single-requests", "10", "--out", str(out)], log)
    summary = json.loads((out / "results.json").read_text())["summary"]
    return {label: summary[key][field] for label, key, field, _ in SERVING}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, type=Path)
    parser.add_argument("--new", default=ROOT, type=Path)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--first", choices=("old", "new"), default="old", help="who runs first in odd rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refactor")
    args = parser.parse_args()
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                    text=True).stdout.strip() for name, root in checkouts.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    log.write_text("")
    rounds: list[dict] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dk-ab-") as tmp:
        for r in range(args.rounds):
            order = [args.first, "new" if args.first == "old" else "old"]
            order = order if r % 2 == 0 else order[::-1]
            record: dict = {"order": order}
            for name in order:
                root, work = checkouts[name], Path(tmp) / f"{r}-{name}"
                load = os.getloadavg()[0]
                print(f"round {r + 1}/{args.rounds}: {name} ({commits[name]}), load {load:.2f}", flush=True)
                figures = {**offline(root, args.artifact, args.variant, work / "offline", log),
                           **serving(root, args.artifact, args.variant, work / "serving", log)}
                record[name] = {"load_average": load, **figures}
            rounds.append(record)
    labels = [(label, higher) for label, _, higher in OFFLINE] + [(label, higher) for label, _, _, higher in SERVING]
    table = []
    for label, higher in labels:
        old = statistics.median(r["old"][label] for r in rounds)
        new = statistics.median(r["new"][label] for r in rounds)
        # A slowdown is less throughput or more latency: as a fraction, positive when new is slower.
        slowdown = (old / new - 1) if higher else (new / old - 1)
        table.append({"figure": label, "old": old, "new": new, "slowdown": slowdown})
    results = {"old": {"path": str(checkouts["old"]), "commit": commits["old"]},
               "new": {"path": str(checkouts["new"]), "commit": commits["new"]},
               "artifact": str(args.artifact.resolve()), "variant": args.variant, "rounds": rounds,
               "median": table, "wall_s": time.time() - started}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    loads = [r[n]["load_average"] for r in rounds for n in ("old", "new")]
    lines = [f"# Refactor A/B: {commits['new']} (new) against {commits['old']} (old)", "",
             f"{args.rounds} rounds, old and new alternating first; artifact `{args.artifact}` variant "
             f"{args.variant}; 1-minute load average before each step {min(loads):.2f}-{max(loads):.2f}. Median "
             "over rounds; slowdown > 0 means new is slower (less throughput or more latency).", "",
             "| figure | old | new | slowdown |", "|---|---:|---:|---:|"]
    lines += [f"| {row['figure']} | {row['old']:.2f} | {row['new']:.2f} | {100 * row['slowdown']:+.1f}% |"
              for row in table]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

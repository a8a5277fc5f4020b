"""Back-to-back A/B of the service's hot-path choices, with wrk, on one artifact.

Each variant is a ``deploykit serve`` started with its own flags/environment; the variants are
measured in turn (A, B, C, ..., then again in reverse, ``--rounds`` times), each with wrk at one
concurrency for ``--duration`` seconds, so that the machine's drift hits every variant alike.
The summary is the median per variant (texts/s, p50, p99) and its ratio to the first variant.
This is how the decisions in docs/benchmarks.md were (and are to be re-)measured.

Variants (``--variants``, comma-separated; the first is the reference):

- ``lean``: this checkout's defaults (deploykit's lean layer, uvloop + httptools, orjson).
- ``asyncio-h11``: the same with uvloop and httptools hidden from the worker (uvicorn falls
  back to asyncio and h11).
- ``layers-on``: the lean layer with BentoML's per-request layers switched back on
  (``--access-log --request-metrics --tracing``).
- ``no-wait``: ``--max-latency-ms 0`` (never wait for company under load).
- ``threads1``: ``--threads 1``; ``workers2``: ``--workers 2 --threads 1``.
- ``keys``: API keys on (``DEPLOYKIT_API_KEYS``); every variant's requests carry the same
  ``Authorization: Bearer`` header, so only the check differs (issue 28: >= 0.98x).
- ``trace1``, ``trace100``: ``--tracing`` at 1% and 100% sampling, no exporter (the cost of
  the spans themselves; issue 28: >= 0.97x at 1%).
- ``main=PATH``: the service of another checkout (e.g. ``main=/work/main``), run with this
  interpreter: the before/after of a change (at ``--concurrency 1``: what the new gauges and
  histograms add to a lone request's p50; issue 28: <= 0.2 ms).

Every round runs each variant once, in alternating order, each on a freshly started server: a
round is one interleaved A/B pair per variant, and the summary gives the median of the per-round
ratios to the first variant with their range (issue 28 asks for >= 5 pairs: ``--rounds 5``).

    python3 benchmarks/serving_ab.py --artifact ART --variants lean,asyncio-h11,threads1 \\
        [--concurrency 32] [--texts-per-request 1] [--protocol classify] [--duration 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit.bench.inputs import sample_texts  # noqa: E402
from deploykit.tasks.classification.bench import Target  # noqa: E402
from deploykit.config import BenchOnlineConfig  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402
from deploykit.serve.launch import free_port, stop_process_group  # noqa: E402
from fair_admission import uptime  # noqa: E402  (this folder is on sys.path)
from serving_compare import run_wrk, wait_ready, write_bodies  # noqa: E402
FLAGS = {"lean": [], "asyncio-h11": [], "layers-on": ["--access-log", "--request-metrics", "--tracing"],
         "no-wait": ["--max-latency-ms", "0"], "threads1": ["--threads", "1"],
         "workers2": ["--workers", "2", "--threads", "1"],
         "keys": [], "trace1": ["--tracing", "--trace-sample-rate", "0.01"],
         "trace100": ["--tracing", "--trace-sample-rate", "1"]}
KEY = "bench-key-0b7e51"  # the keys variant's only key; every variant's requests carry it
ENV = {"keys": {"DEPLOYKIT_API_KEYS": KEY}}


def hide_fast_io(folder: Path) -> str:
    """A folder to put first on PYTHONPATH that makes ``import uvloop``/``import httptools`` fail."""
    for name in ("uvloop", "httptools"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} hidden for an A/B run')\n")
    return str(folder)


def start(variant: str, artifact: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    checkout, flags = ROOT, FLAGS.get(variant, [])
    env.update(ENV.get(variant, {}))
    if variant == "asyncio-h11":
        env["PYTHONPATH"] = hide_fast_io(work / "hidden")
    if variant.startswith("main="):
        checkout = Path(variant.split("=", 1)[1]).resolve()
        env["PYTHONPATH"] = str(checkout)
    log = work / f"{variant.replace('/', '_')}-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(artifact), "--port", str(port),
                                 *flags], cwd=checkout, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/readyz", log)
    except RuntimeError:
        stop_process_group(proc)
        raise
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--variants", default="lean,asyncio-h11")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--protocol", default="classify", choices=("classify", "v2"))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    artifact = Path(args.artifact).resolve()
    name = Manifest.read(artifact).name
    variants = args.variants.split(",")
    texts = sample_texts("tweets", "text", 1024, 0)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    loads = [list(os.getloadavg())]
    with tempfile.TemporaryDirectory(prefix="dk-ab-") as tmp:
        work = Path(tmp)
        target = Target(BenchOnlineConfig(url="http://x", protocol=args.protocol, model=name))
        per = args.texts_per_request
        bodies = write_bodies(work / "bodies.jsonl", target, texts, per)
        route = target.url.removeprefix("http://x")
        for round_ in range(args.rounds):
            for variant in (variants if round_ % 2 == 0 else variants[::-1]):
                proc, url = start(variant, artifact, work)
                try:
                    auth = {"Authorization": f"Bearer {KEY}"}
                    run_wrk(url + route, bodies, args.concurrency, args.warmup, auth)
                    r = run_wrk(url + route, bodies, args.concurrency, args.duration, auth)
                finally:
                    stop_process_group(proc, timeout=60)
                ok = r["requests"] - r["non_2xx"]
                r["texts_per_s"] = ok * per / r["duration_s"]
                results[variant].append(r)
                print(f"round {round_ + 1} {variant}: {r['texts_per_s']:.1f} texts/s, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, {r['non_2xx']} non-2xx", flush=True)
                loads.append(list(os.getloadavg()))
    first = results[variants[0]]
    lines = [f"wrk c={args.concurrency}, {per} text(s)/request, {args.protocol}, {args.duration:.0f} s x "
             f"{args.rounds} rounds; 1-min load average {min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}",
             "", "| variant | texts/s (median) | x first: median of pairs (range) | p50 ms | p50 - first's, "
             "median of pairs (range) | p99 ms |", "|---|---|---|---|---|---|"]
    for variant, runs in results.items():
        tps = statistics.median(r["texts_per_s"] for r in runs)
        ratios = [r["texts_per_s"] / f["texts_per_s"] for r, f in zip(runs, first)]  # one per round: a pair
        deltas = [r["p50_ms"] - f["p50_ms"] for r, f in zip(runs, first)]
        lines.append(f"| {variant} | {tps:.1f} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
                     f"| {statistics.median(r['p50_ms'] for r in runs):.2f} | {statistics.median(deltas):+.3f} "
                     f"({min(deltas):+.3f} to {max(deltas):+.3f}) | {statistics.median(r['p99_ms'] for r in runs):.1f} |")
    print("\n" + "\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "load_average": loads, "uptime": uptime(),
                                              "results": results, "table": lines}, indent=2))


if __name__ == "__main__":
    main()

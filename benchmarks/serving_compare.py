"""The same artifact served by deploykit's service and by a real Triton, side by side in one run.

For each run (``--runs``, default 3; the systems alternate order between runs), each system is
started on its own, loaded at each concurrency with each number of texts per request, by each
load generator, then stopped:

- systems: ``deploykit`` (``deploykit serve``: ``/classify`` and the v2 route, the same
  process), ``deploykit-bentoml`` (``/classify`` with BentoML's adaptive batcher, a reference
  row), ``deploykit-nobatch`` (``--max-batch-size 1``), ``triton`` (the real ``tritonserver``
  bundled in ``nvidia-pytriton`` serving the repository ``deploykit triton`` writes, model
  ``NAME_python``: deploykit's runtime in Triton's Python backend behind Triton's dynamic
  batcher; PyTriton's build has no ONNX Runtime backend);
- load generators: ``bench`` (``deploykit bench online``'s asyncio closed loop, plus single
  requests before the load and right after the heaviest level) and ``wrk`` (the C load
  generator, Debian package ``wrk``, with ``benchmarks/wrk/post_bodies.lua``: far less of the
  2 cores for the client);
- texts per request: ``--texts-per-request`` (default 1 and 8), drawn from real tweets.

Before the servers the in-process runtime is timed at the batch sizes the loads make (the
ceiling of any server). Each figure of the summary is the **median of the runs**; ratios are
taken within a run (same machine state) and then the median. The load average is recorded
before and after every system, since numbers taken beside other jobs mean little.

    python3 benchmarks/serving_compare.py --artifact runs/art [--variant int8] \\
        [--concurrency 1,8,32,64] [--texts-per-request 1,8] [--duration 6] [--runs 3] \\
        [--generators bench,wrk] [--systems deploykit,deploykit-bentoml,triton] [--workers 1] \\
        [--out benchmarks/results/serving]

Needs ``.venv-pytriton/`` (``bash .ci/setup_pytriton.sh``) for Triton and ``wrk`` on PATH for
the wrk generator; without them those rows are skipped with a note. Every server binds
127.0.0.1 on a free port and is stopped by its process group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit.bench import report  # noqa: E402
from deploykit.bench.inputs import sample_texts  # noqa: E402
from deploykit.bench.online import run_levels  # noqa: E402
from deploykit.tasks.classification.bench import Target  # noqa: E402
from deploykit.bench.stats import summarize_latencies, time_calls  # noqa: E402
from deploykit.config import BenchOnlineConfig  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402
from deploykit.runtime import Runtime  # noqa: E402
from deploykit.serve.launch import free_port, stop_process_group  # noqa: E402

VENV = Path(os.environ.get("DEPLOYKIT_PYTRITON_VENV", ROOT / ".venv-pytriton"))
WRK_SCRIPT = ROOT / "benchmarks" / "wrk" / "post_bodies.lua"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_deploykit(artifact: Path, variant: str, threads: int, work: Path, *extra: str):
    port = free_port()
    log = work / f"deploykit-{port}.log"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(artifact), "--port", str(port),
                                 "--variant", variant, "--threads", str(threads), *extra],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/readyz", log)
    return proc, url


def start_triton(artifact: Path, variant: str, threads: int, work: Path, instances: int = 1):
    """tritonserver on a repository written by ``deploykit triton`` (``instances`` model
    instances of ``threads`` threads each); (process, URL, model name)."""
    site = next(VENV.glob("lib/python3*/site-packages"))
    server = site / "pytriton" / "tritonserver"
    libdir = subprocess.run([str(VENV / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    repo = work / "triton_repo"
    subprocess.run([sys.executable, "-m", "deploykit", "triton", str(artifact), "--out", str(repo),
                    "--variant", variant, "--threads", str(threads), "--instances", str(instances),
                    "--overwrite"], cwd=ROOT, check=True,
                   capture_output=True)
    model = Manifest.read(artifact).name + "_python"
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    command = [str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
               "--model-control-mode=explicit", f"--load-model={model}",
               f"--backend-directory={server / 'backends'}",
               f"--backend-config=python,shm-region-prefix-name=dkbench{os.getpid()}x",
               *(f"--{k}-address=127.0.0.1" for k in ports), *(f"--{k}-port={v}" for k, v in ports.items())]
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}",
               LD_LIBRARY_PATH=":".join(filter(None, [libdir, str(site / "nvidia_pytriton.libs"),
                                                      os.environ.get("LD_LIBRARY_PATH")])))
    log = work / "tritonserver.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command, env=env, cwd=repo, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{ports['http']}"
    wait_ready(proc, f"{url}/v2/models/{model}/ready", log)
    return proc, url, model


def runtime_baseline(artifact: Path, variant: str, threads: int, texts: list[str], batches: list[int],
                     duration: float) -> dict[str, dict]:
    """In-process runtime at each batch size (texts in, logits out), same texts as the load."""
    runtime = Runtime(artifact, variant, threads=threads, max_batch_size=64)
    out = {}
    for batch in batches:
        def call(i: int, batch=batch) -> int:
            start = (i * batch) % len(texts)
            runtime.logits((texts[start:] + texts[:start])[:batch])
            return 0

        lat, _, wall = time_calls(call, warmup=2, min_iters=5, min_duration=duration)
        out[str(batch)] = {**summarize_latencies(lat), "texts_per_s": len(lat) * batch / wall, "iters": len(lat)}
    return out


def bench_levels(url: str, protocol: str, model: str, per_request: int, args, texts: list[str]) -> dict[str, dict]:
    """``deploykit bench online``'s closed loop at each level, keyed by level label."""
    cfg = BenchOnlineConfig(url=url, protocol=protocol, model=model, concurrency=args.concurrency,
                            duration=args.duration, warmup=args.warmup, single_requests=args.single_requests,
                            texts_per_request=per_request)
    return {lv["label"]: lv for lv in asyncio.run(run_levels(cfg, texts, Target(cfg)))}


def write_bodies(path: Path, target: Target, texts: list[str], per_request: int) -> Path:
    """The request bodies wrk sends in turn: one JSON body of ``per_request`` texts per line."""
    with open(path, "w") as fh:
        for i in range(0, len(texts) - per_request + 1, per_request):
            fh.write(json.dumps(target.body(texts[i:i + per_request]), ensure_ascii=False) + "\n")
    return path


def run_wrk(url: str, bodies: Path, concurrency: int, seconds: float, headers: dict[str, str] | None = None) -> dict:
    """One wrk run (one thread, ``concurrency`` keep-alive connections, ``headers`` on every
    request); the script's JSON line."""
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    proc = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", *extra,
                           "--timeout", "30s", "-s", str(WRK_SCRIPT), url, "--", str(bodies)],
                          capture_output=True, text=True, timeout=seconds + 120)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("WRK_JSON "))


def wrk_levels(url: str, protocol: str, model: str, per_request: int, args, texts: list[str],
               work: Path) -> dict[str, dict]:
    """wrk at each concurrency (one wrk thread, keep-alive connections = concurrency)."""
    target = Target(BenchOnlineConfig(url=url, protocol=protocol, model=model))
    bodies = write_bodies(work / f"bodies-{protocol}-{per_request}.jsonl", target, texts, per_request)
    out = {}
    for concurrency in sorted(int(c) for c in args.concurrency.split(",")):
        if args.warmup:
            run_wrk(target.url, bodies, concurrency, args.warmup)
        result = run_wrk(target.url, bodies, concurrency, args.duration)
        ok = result["requests"] - result["non_2xx"]
        out[f"concurrency {concurrency}"] = {**result, "concurrency": concurrency, "ok": ok,
                                             "errors": {"non_2xx": result["non_2xx"],
                                                        "socket": result["socket_errors"]},
                                             "requests_per_s": ok / result["duration_s"],
                                             "texts_per_s": ok * per_request / result["duration_s"]}
    return out


def one_run(args, artifact: Path, variant: str, model_name: str, threads: int, texts: list[str],
            systems: list[str], generators: list[str], per_requests: list[int], notes: list[str]) -> dict:
    """Every system once: {system: {"load": [before, after], route: {generator: {texts: levels}}}}."""
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="dk-serving-") as tmp:
        work = Path(tmp)
        for name in systems:
            print(f"  {name} ...", flush=True)
            if name == "triton":
                if not (VENV / ".deploykit-ready").is_file():
                    notes.append(f"triton skipped: no {VENV} (bash .ci/setup_pytriton.sh)")
                    continue
                proc, url, model = start_triton(artifact, variant, threads, work, args.workers)
                routes = {"v2": (model, "v2")}
            else:
                extra = {"deploykit": (), "deploykit-nobatch": ("--max-batch-size", "1"),
                         "deploykit-bentoml": ("--batcher", "bentoml")}[name]
                proc, url = start_deploykit(artifact, variant, threads, work, "--workers", str(args.workers), *extra)
                routes = {"classify": (model_name, "classify")}
                if name == "deploykit":
                    routes["v2"] = (model_name, "v2")
            system = results[name] = {"load": [list(os.getloadavg())]}
            try:
                for route, (model, protocol) in routes.items():
                    for generator in generators:
                        for per_request in per_requests:
                            print(f"    {route} {generator} {per_request} text(s)/request", flush=True)
                            levels = (bench_levels(url, protocol, model, per_request, args, texts)
                                      if generator == "bench" else
                                      wrk_levels(url, protocol, model, per_request, args, texts, work))
                            system.setdefault(route, {}).setdefault(generator, {})[str(per_request)] = levels
            finally:
                stop_process_group(proc, timeout=60)
            system["load"].append(list(os.getloadavg()))
    return results


def summarize(runs: list[dict], runtime: dict, levels: list[int]) -> dict:
    """Median over runs of texts/s, p50/p99 and the ratios (each ratio taken within its run)."""
    rows: dict = {}
    for run in runs:
        for system, routes in run.items():
            triton = run.get("triton", {}).get("v2", {})
            for route, generators in routes.items():
                if route == "load":
                    continue
                for generator, per in generators.items():
                    for per_request, lvls in per.items():
                        for c in levels:
                            lv = lvls.get(f"concurrency {c}")
                            if lv is None:
                                continue
                            key = f"{system} {route}|{generator}|{per_request}|{c}"
                            row = rows.setdefault(key, {"texts_per_s": [], "p50_ms": [], "p99_ms": [],
                                                        "errors": [], "vs_triton": [], "vs_runtime": []})
                            row["texts_per_s"].append(lv["texts_per_s"])
                            row["p50_ms"].append(lv["p50_ms"])
                            row["p99_ms"].append(lv["p99_ms"])
                            row["errors"].append(sum(lv["errors"].values()))
                            t = triton.get(generator, {}).get(per_request, {}).get(f"concurrency {c}")
                            if t and t["texts_per_s"]:
                                row["vs_triton"].append(lv["texts_per_s"] / t["texts_per_s"])
                            batch = str(min(c * int(per_request), 256))
                            if batch in runtime:
                                row["vs_runtime"].append(lv["texts_per_s"] / runtime[batch]["texts_per_s"])
                        for phase in ("single, before load", "single, right after"):
                            lv = next((v for k, v in lvls.items() if k.startswith(phase)), None)
                            if lv is not None and per_request == "1":
                                rows.setdefault(f"{system} {route}|{generator}|single|{phase}",
                                                {"p50_ms": []})["p50_ms"].append(lv["p50_ms"])
    return {key: {k: (statistics.median(v) if v else None) for k, v in row.items()} | {"runs": len(row["p50_ms"])}
            for key, row in rows.items()}


def markdown(results: dict) -> str:
    levels = [int(c) for c in results["concurrency"].split(",")]
    summary, rt = results["summary"], results["runtime"]
    load = [f"{l[0]:.1f}" for run in results["runs"] for s in run.values() for l in s["load"]]
    servers = f"{results['workers']} process(es) / instance(s) x {results['server_threads']}"
    lines = [f"# Serving comparison: {results['model']} ({results['variant']}; runtime {results['threads']} threads; "
             f"servers {servers} thread(s))", "",
             f"{len(results['runs'])} run(s); in each, the systems one after another on the same machine, same "
             f"texts, closed loop, {results['duration']:.0f} s per level after {results['warmup']:.0f} s of warm-up. "
             "Every figure is the median over the runs; ratios are taken within a run, then the median "
             f"(x T: deploykit / Triton, same generator and load; x rt: / the in-process runtime at batch = "
             f"concurrency x texts per request). Wall time {results['wall_s']:.0f} s. 1-minute load average "
             f"before/after each system: {', '.join(load)}.", "",
             report.machine_markdown(results["machine"])]
    if results["notes"]:
        lines += [f"- Note: {n}" for n in results["notes"]] + [""]
    lines += ["## In-process runtime (the ceiling)", "",
              "| batch | texts/s | p50 ms |", "|---|---|---|"]
    lines += [f"| {b} | {v['texts_per_s']:.1f} | {v['p50_ms']:.2f} |" for b, v in sorted(rt.items(), key=lambda x: int(x[0]))]
    systems = sorted({k.split("|")[0] for k in summary})
    for generator in results["generators"]:
        for per_request in results["texts_per_request"]:
            lines += ["", f"## {generator}: {per_request} text(s) per request — texts/s (x T, x rt); p50 / p99 ms", "",
                      "| system route | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|" + "---|" * len(levels)]
            for system in systems:
                cells = []
                for c in levels:
                    row = summary.get(f"{system}|{generator}|{per_request}|{c}")
                    if row is None:
                        cells.append("-")
                        continue
                    ratio = ", ".join(x for x in (f"{row['vs_triton']:.2f}x T" if row["vs_triton"] else "",
                                                  f"{row['vs_runtime']:.2f}x rt" if row["vs_runtime"] else "") if x)
                    err = f", {row['errors']:.0f} err" if row["errors"] else ""
                    cells.append(f"{row['texts_per_s']:.1f} ({ratio}); {row['p50_ms']:.1f} / {row['p99_ms']:.1f}{err}")
                if any(cell != "-" for cell in cells):
                    lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += ["", f"## A lone request (one text, bench generator), p50 ms; runtime batch 1: {rt['1']['p50_ms']:.2f} ms", "",
              "| system route | before load | above runtime | right after the heaviest level | above runtime |",
              "|---|---|---|---|---|"]
    for system in systems:
        before = summary.get(f"{system}|bench|single|single, before load")
        after = summary.get(f"{system}|bench|single|single, right after")
        if before and after:
            lines.append(f"| {system} | {before['p50_ms']:.2f} | +{before['p50_ms'] - rt['1']['p50_ms']:.2f} | "
                         f"{after['p50_ms']:.2f} | +{after['p50_ms'] - rt['1']['p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--variant", default=None, help="default: the manifest's default_variant")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--texts-per-request", default="1,8")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--single-requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="default: every usable CPU")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--systems", default="deploykit,deploykit-bentoml,triton")
    parser.add_argument("--generators", default="bench,wrk")
    parser.add_argument("--workers", type=int, default=1,
                        help="deploykit worker processes and Triton model instances, each with "
                             "--threads / workers threads (default 1: one process with every thread)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving"))
    args = parser.parse_args()

    from deploykit.session import available_cpus

    artifact = Path(args.artifact).resolve()
    manifest = Manifest.read(artifact)
    variant = manifest.pick(args.variant).name
    threads = args.threads or available_cpus()
    # The runtime reference keeps every thread (the ceiling one process reaches); the servers
    # split them over their processes / instances.
    server_threads = max(1, threads // args.workers)
    texts = sample_texts("tweets", "text", args.samples, 0)
    levels = [int(c) for c in args.concurrency.split(",")]
    per_requests = [int(n) for n in args.texts_per_request.split(",")]
    generators = args.generators.split(",")
    notes: list[str] = []
    if "wrk" in generators and shutil.which("wrk") is None:
        notes.append("wrk skipped: not on PATH (apt-get install wrk)")
        generators.remove("wrk")
    started = time.time()
    results = {"model": manifest.name, "variant": variant, "threads": threads, "workers": args.workers,
               "server_threads": server_threads, "concurrency": args.concurrency,
               "texts_per_request": [str(n) for n in per_requests], "generators": generators,
               "duration": args.duration, "warmup": args.warmup, "machine": report.machine(), "notes": notes,
               "runs": []}
    batches = sorted({1, *(min(c * n, 256) for c in levels for n in per_requests)})
    print(f"runtime in-process at batch sizes {batches} ...", flush=True)
    results["runtime"] = runtime_baseline(artifact, variant, threads, texts, batches, args.duration)
    systems = args.systems.split(",")
    for run in range(args.runs):
        order = systems if run % 2 == 0 else systems[::-1]  # alternate, so drift hits both sides
        print(f"run {run + 1}/{args.runs}: {', '.join(order)}", flush=True)
        results["runs"].append(one_run(args, artifact, variant, manifest.name, server_threads, texts, order,
                                       generators, per_requests, notes))
    results["summary"] = summarize(results["runs"], results["runtime"], levels)
    results["wall_s"] = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()

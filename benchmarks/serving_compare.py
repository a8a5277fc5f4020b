"""The same artifact served by deploykit's service and by a real Triton, side by side in one run.

For each system, one at a time on the same machine, with the same texts and the same load
(``deploykit bench online``'s closed loop at each concurrency; one text per request):

- ``deploykit``: ``deploykit serve`` with its own dynamic batcher (the default);
- ``deploykit-nobatch``: the same service with ``--max-batch-size 1`` (batching off);
- ``deploykit-bentoml``: the same service with BentoML's adaptive batching (``--batcher bentoml``);
- ``triton``: the real ``tritonserver`` bundled in ``nvidia-pytriton`` serving the repository
  ``deploykit triton`` writes, model ``NAME_python`` (deploykit's runtime in Triton's Python
  backend, behind Triton's dynamic batcher; PyTriton's build has no ONNX Runtime backend).

Before the servers, the in-process runtime is timed on the same texts at batch sizes equal to
the concurrency levels: the service's throughput at concurrency C over the runtime's at batch C
is what the HTTP and batching layers cost. Single-request latency is measured before the load
and right after the heaviest level, against the runtime's batch-1 latency.

    python3 benchmarks/serving_compare.py --artifact runs/art [--variant int8] \\
        [--concurrency 1,8,32,64] [--duration 5] [--out benchmarks/results/serving]

Needs ``.venv-pytriton/`` (``bash .ci/setup_pytriton.sh``) for the Triton system; without it
Triton is skipped with a note. Every server binds 127.0.0.1 on a free port and is stopped by
its process group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from deploykit.bench.stats import summarize_latencies, time_calls  # noqa: E402
from deploykit.config import BenchOnlineConfig  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402
from deploykit.runtime import Runtime  # noqa: E402
from deploykit.serve.launch import free_port, stop_process_group  # noqa: E402

VENV = Path(os.environ.get("DEPLOYKIT_PYTRITON_VENV", ROOT / ".venv-pytriton"))


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


def stop(proc: subprocess.Popen) -> None:
    """Stop exactly the server this script started (its own process group)."""
    stop_process_group(proc, timeout=60)


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


def start_triton(artifact: Path, variant: str, threads: int, work: Path):
    """tritonserver on a repository written by ``deploykit triton``; (process, URL, model name)."""
    site = next(VENV.glob("lib/python3*/site-packages"))
    server = site / "pytriton" / "tritonserver"
    libdir = subprocess.run([str(VENV / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    repo = work / "triton_repo"
    subprocess.run([sys.executable, "-m", "deploykit", "triton", str(artifact), "--out", str(repo),
                    "--variant", variant, "--threads", str(threads), "--overwrite"], cwd=ROOT, check=True,
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
    runtime = Runtime(artifact, variant, threads=threads, max_batch_size=max(batches))
    out = {}
    for batch in batches:
        def call(i: int, batch=batch) -> int:
            start = (i * batch) % len(texts)
            runtime.logits((texts[start:] + texts[:start])[:batch])
            return 0

        lat, _, wall = time_calls(call, warmup=2, min_iters=5, min_duration=duration)
        out[str(batch)] = {**summarize_latencies(lat), "texts_per_s": len(lat) * batch / wall, "iters": len(lat)}
    return out


def load(url: str, protocol: str, model: str, args, texts: list[str]) -> list[dict]:
    cfg = BenchOnlineConfig(url=url, protocol=protocol, model=model, concurrency=args.concurrency,
                            duration=args.duration, warmup=args.warmup, single_requests=args.single_requests)
    return asyncio.run(run_levels(cfg, texts))


def markdown(results: dict) -> str:
    levels = [int(c) for c in results["concurrency"].split(",")]
    systems = list(results["systems"])
    rt = results["runtime"]
    lines = [f"# Serving comparison: {results['model']} ({results['variant']})", "",
             f"One run, systems one after another on the same machine, same texts, closed loop with "
             f"one text per request, {results['duration']:.0f} s per level (after {results['warmup']:.0f} s "
             f"warm-up); the load generator runs on the same cores. Wall time {results['wall_s']:.0f} s.", "",
             report.machine_markdown(results["machine"]),
             "## Throughput, texts/s (x Triton; x in-process runtime at batch = concurrency)", "",
             "| system | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|" + "---|" * len(levels),
             "| runtime in-process (batch = c) | " + " | ".join(f"{rt[str(c)]['texts_per_s']:.1f}" for c in levels) + " |"]
    for name in systems:
        row = []
        for c in levels:
            lv = results["systems"][name].get(f"concurrency {c}")
            if lv is None:
                row.append("-")
                continue
            vs_triton = results["ratios"].get(name, {}).get(str(c), {}).get("vs_triton")
            vs_rt = results["ratios"].get(name, {}).get(str(c), {}).get("vs_runtime")
            row.append(f"{lv['texts_per_s']:.1f} ({'' if vs_triton is None else f'{vs_triton:.2f}x T, '}"
                       f"{vs_rt:.2f}x rt)")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "## Latency p50 / p99 ms (errors)", "",
              "| system | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|" + "---|" * len(levels),
              "| runtime in-process (batch = c) | " + " | ".join(
                  f"{rt[str(c)]['p50_ms']:.1f} / {rt[str(c)]['p99_ms']:.1f}" for c in levels) + " |"]
    for name in systems:
        row = []
        for c in levels:
            lv = results["systems"][name].get(f"concurrency {c}")
            errors = sum(lv["errors"].values()) if lv else 0
            row.append("-" if lv is None else f"{lv['p50_ms']:.1f} / {lv['p99_ms']:.1f}" + (f" ({errors} err)" if errors else ""))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", f"## Single-request latency (one text), runtime batch-1 p50 {rt['1']['p50_ms']:.2f} ms", "",
              "| system | before load p50 | above runtime | right after c=" + str(max(levels)) + " p50 | above runtime |",
              "|---|---|---|---|---|"]
    for name in systems:
        s = results["systems"][name]
        before = s.get("single, before load")
        after = next((v for k, v in s.items() if k.startswith("single, right after")), None)
        if before and after:
            lines.append(f"| {name} | {before['p50_ms']:.2f} ms | +{before['p50_ms'] - rt['1']['p50_ms']:.2f} ms | "
                         f"{after['p50_ms']:.2f} ms | +{after['p50_ms'] - rt['1']['p50_ms']:.2f} ms |")
    return "\n".join(lines) + "\n\n![serving_compare.png](serving_compare.png)\n"


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(c) for c in results["concurrency"].split(",")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(levels, [results["runtime"][str(c)]["texts_per_s"] for c in levels], "k--", marker="s",
              label="runtime in-process (batch = c)")
    for name, levels_of in results["systems"].items():
        xs = [c for c in levels if f"concurrency {c}" in levels_of]
        left.plot(xs, [levels_of[f"concurrency {c}"]["texts_per_s"] for c in xs], marker="o", label=name)
        line, = right.plot(xs, [levels_of[f"concurrency {c}"]["p50_ms"] for c in xs], marker="o", label=f"{name} p50")
        right.plot(xs, [levels_of[f"concurrency {c}"]["p99_ms"] for c in xs], linestyle="--",
                   color=line.get_color(), label=f"{name} p99")
    left.set_ylabel("texts / s")
    right.set_ylabel("ms per request")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (one text per request)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"serving: {results['model']} ({results['variant']})")
    fig.tight_layout()
    fig.savefig(out / "serving_compare.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--variant", default=None, help="default: the manifest's default_variant")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--single-requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="default: every usable CPU")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--systems", default="deploykit,deploykit-nobatch,deploykit-bentoml,triton")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving"))
    args = parser.parse_args()

    from deploykit.runtime import available_cpus

    artifact = Path(args.artifact).resolve()
    manifest = Manifest.read(artifact)
    variant = manifest.pick(args.variant).name
    threads = args.threads or available_cpus()
    texts = sample_texts("tweets", "text", args.samples, 0)
    levels = [int(c) for c in args.concurrency.split(",")]
    started = time.time()
    results = {"model": manifest.name, "variant": variant, "threads": threads, "concurrency": args.concurrency,
               "duration": args.duration, "warmup": args.warmup, "machine": report.machine(),
               "systems": {}, "notes": []}
    print(f"runtime in-process at batch sizes {levels} ...", flush=True)
    results["runtime"] = runtime_baseline(artifact, variant, threads, texts, sorted(set(levels) | {1}),
                                          args.duration)
    with tempfile.TemporaryDirectory(prefix="dk-serving-") as tmp:
        work = Path(tmp)
        for name in args.systems.split(","):
            print(f"{name} ...", flush=True)
            if name == "triton":
                if not (VENV / ".deploykit-ready").is_file():
                    results["notes"].append(f"triton skipped: no {VENV} (bash .ci/setup_pytriton.sh)")
                    continue
                proc, url, model = start_triton(artifact, variant, threads, work)
                protocol = "v2"
            else:
                extra = {"deploykit": (), "deploykit-nobatch": ("--max-batch-size", "1"),
                         "deploykit-bentoml": ("--batcher", "bentoml")}[name]
                proc, url = start_deploykit(artifact, variant, threads, work, *extra)
                protocol, model = "classify", manifest.name
            try:
                results["systems"][name] = {lv["label"]: lv for lv in load(url, protocol, model, args, texts)}
            finally:
                stop(proc)
    results["ratios"] = {}
    for name, lv in results["systems"].items():
        triton = results["systems"].get("triton", {})
        results["ratios"][name] = {str(c): {
            "vs_runtime": lv[f"concurrency {c}"]["texts_per_s"] / results["runtime"][str(c)]["texts_per_s"],
            "vs_triton": (lv[f"concurrency {c}"]["texts_per_s"] / triton[f"concurrency {c}"]["texts_per_s"]
                          if f"concurrency {c}" in triton else None)} for c in levels}
    results["wall_s"] = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(out, results)
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()

"""Token classification: the issue's quality and speed targets, end to end, in one command.

    python benchmarks/ner_bench.py                       # full size, writes benchmarks/results/ner/
    python benchmarks/ner_bench.py --quick               # smallest settings, a smoke test (to /tmp)
    python benchmarks/ner_bench.py --artifact A --checkpoint C --data TEST.jsonl   # reuse a model

Run it on a quiet machine with nothing else running: the load (``uptime``) is recorded before and
after every part, and numbers taken beside other jobs mean little.

1. **quality**: the generated corpus (``benchmarks/ner_corpus.py``: entities planted into real
   tweets; the test file's persons, organisations and places are never in the training pools),
   the packaged MiniLM fine-tuned on it (``deploykit train --task token-classification``),
   ``deploykit evaluate --data test.jsonl --split all`` (entity-F1 with seqeval, target >= 0.90),
   and ``deploykit export`` (static INT8 chosen by the measured ladder; ``--quick``: a fixed
   static-minmax scheme). Skipped with ``--artifact``.
2. **offline speed**, each of ``--runs`` runs (default 3): ``deploykit bench offline`` with the
   engines side by side in one run (each in its own process, the order rotating per cell), calls
   of 32 sentences of the test file, ``--threads`` threads everywhere: PyTorch +
   ``transformers.pipeline`` (``batch_size=32``, aggregation simple), Optimum's
   ``ORTModelForTokenClassification`` on the same INT8 file through the same pipeline
   (``optimum:int8``), Optimum's own dynamic INT8 (``optimum-quantized``) through it, and
   deploykit's runtime (INT8 and fused fp32). Targets: runtime INT8 >= 2.5x the pipeline on
   PyTorch and >= 1.2x Optimum on the same file.
3. **service speed**, each run: ``deploykit serve`` (INT8) with 1 worker x ``--threads`` threads
   and ``--threads`` workers x 1 thread, loaded by ``deploykit bench online --protocol ner``'s load
   plan (closed loop, one sentence per request, concurrency 1 and 32), and the in-process runtime
   on the same sentences in calls of 32 (what a server at c=32 could at most do). Target: /ner at
   c=32 >= 0.8x the in-process runtime.

Writes ``summary.json`` and ``summary.md`` (medians over the runs of every figure and of every
ratio taken within a run, the targets met or not) and each run's ``runN/`` to ``--out``. Servers
bind 127.0.0.1 on free ports and are stopped by their process group.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving_compare import wait_ready  # benchmarks/, on the path as this script's folder

from deploykit.bench.inputs import sample_texts
from deploykit.bench.online import run_levels
from deploykit.bench.stats import summarize_latencies, time_calls
from deploykit.config import BenchOnlineConfig
from deploykit.serve.launch import free_port, stop_process_group
from deploykit.tasks.token_classification.bench import Target
from deploykit.tasks.token_classification.runtime import Runtime

AGGREGATION = "simple"
BATCH = 32
QUALITY_TARGET = 0.90
# Full size and --quick: the corpus, the fine-tuning, the INT8 choice, the timing.
SIZES = {
    "full": {"train_rows": 3000, "test_rows": 500, "train": ["--epochs", "2"], "runs": 3, "duration": 4.0,
             "samples": 512, "export": []},
    "quick": {"train_rows": 300, "test_rows": 64, "train": ["--max-steps", "20", "--eval-every", "20"], "runs": 1,
              "duration": 0.5, "samples": 64,
              "export": ["--int8-scheme", "static-minmax", "--int8-fallback", "off", "--calibration-samples", "64",
                         "--int8-search-samples", "32", "--max-eval-samples", "32", "--long-texts", "2",
                         "--allow-parity-failure"]},
}


def uptime() -> str:
    """The machine's load as ``uptime`` says it (recorded with every part)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def deploykit(*args: str, log: Path) -> float:
    """Run ``deploykit ARGS`` (output to ``log``); its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "deploykit", *args], cwd=ROOT, stdout=fh,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"deploykit {args[0]} exited {done.returncode}; see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def quality(args, size: dict, work: Path) -> dict:
    """Generate the corpus, fine-tune MiniLM, score the unseen-names file, export: sets ``args.artifact``,
    ``args.checkpoint``, ``args.data``; the scores, the INT8 choice and each stage's seconds."""
    data, run, art = work / "data", work / "run", work / "artifact"
    record: dict = {"load_before": uptime(), "seconds": {}}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ner_corpus.py"), "--out", str(data),
                    "--train-rows", str(size["train_rows"]), "--test-rows", str(size["test_rows"])], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    record["seconds"]["corpus"] = time.perf_counter() - start
    record["seconds"]["train"] = deploykit(
        "train", "--task", "token-classification", "--data", str(data / "train.jsonl"), "--entities-column",
        "entities", "--model", "minilm", "--out", str(run), "--max-length", "64", "--stride", "16", "--batch-size", "32",
        "--lr", "2e-4", "--warmup-ratio", "0.1", *size["train"], log=work / "train.log")
    record["seconds"]["evaluate"] = deploykit(
        "evaluate", str(run / "checkpoint"), "--data", str(data / "test.jsonl"), "--split", "all", "--slice-column",
        "source", "--out", str(work / "eval-unseen"), log=work / "evaluate.log")
    record["seconds"]["export"] = deploykit(
        "export", str(run / "checkpoint"), "--out", str(art), "--name", "ner", "--quantize", "static",
        *size["export"], log=work / "export.log")
    metrics = json.loads((work / "eval-unseen" / "metrics.json").read_text())
    for name in ("metrics.json", "report.md"):
        shutil.copy(work / "eval-unseen" / name, args.out / f"quality-{name}")
    manifest = json.loads((art / "manifest.json").read_text())
    int8 = manifest["variants"].get("int8", {})
    record.update({
        "train_rows": size["train_rows"], "test_rows": size["test_rows"], "n": metrics["n"],
        "entity_f1": metrics["entity_f1"], "entity_precision": metrics["entity_precision"],
        "entity_recall": metrics["entity_recall"], "token_accuracy": metrics["token_accuracy"],
        "per_type_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
        "target_entity_f1": QUALITY_TARGET, "met": metrics["entity_f1"] >= QUALITY_TARGET,
        "default_variant": manifest["default_variant"],
        "int8": {"scheme": int8.get("quantization", {}).get("scheme"), "servable": int8.get("servable"),
                 "span_agreement": int8.get("parity", {}).get("span_agreement"),
                 "entity_f1": int8.get("metrics", {}).get("entity_f1"),
                 "reference_entity_f1": manifest.get("reference_metrics", {}).get("entity_f1")},
        "load_after": uptime()})
    args.artifact, args.checkpoint, args.data = art, run / "checkpoint", data / "test.jsonl"
    return record


def offline(args, run_dir: Path) -> dict:
    """One ``deploykit bench offline`` run (the engines side by side); its results.json."""
    deploykit("bench", "offline", str(args.artifact), "--checkpoint", str(args.checkpoint), "--data", str(args.data),
              "--engines", "pytorch,optimum,optimum-quantized,runtime", "--variants", "int8,opt",
              "--batch-sizes", str(BATCH), "--samples", str(args.samples), "--threads", str(args.threads),
              "--bench-aggregation", AGGREGATION, "--min-duration", str(args.duration), "--out", str(run_dir),
              log=run_dir.parent / "offline.log")
    return json.loads((run_dir / "results.json").read_text())


def runtime_ceiling(args, texts: list[str]) -> dict:
    """The in-process runtime (INT8, as served) on calls of 32 sentences, entities out."""
    runtime = Runtime(args.artifact, "int8", threads=args.threads)

    def call(i: int) -> int:
        start = (i * BATCH) % len(texts)
        runtime.predict((texts[start:] + texts[:start])[:BATCH], AGGREGATION)
        return 0

    latencies, _, wall = time_calls(call, warmup=3, min_iters=5, min_duration=args.duration)
    return {**summarize_latencies(latencies), "texts_per_s": len(latencies) * BATCH / wall}


def served(args, texts: list[str], workers: int, threads: int, work: Path) -> dict:
    """``deploykit serve`` (INT8) with ``workers`` x ``threads``, closed loop at concurrency 1 and 32,
    one sentence per request."""
    port = free_port()
    log = work / f"serve-{workers}x{threads}.log"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(args.artifact), "--host", "127.0.0.1",
                                 "--port", str(port), "--variant", "int8", "--threads", str(threads),
                                 "--workers", str(workers)],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/readyz", log)
        cfg = BenchOnlineConfig(url=url, protocol="ner", concurrency="1,32", duration=args.duration,
                                warmup=min(1.0, args.duration), single_requests=0)
        levels = asyncio.run(run_levels(cfg, texts, Target(cfg)))
    finally:
        stop_process_group(proc)
    return {level["label"]: {k: level[k] for k in ("texts_per_s", "p50_ms", "p99_ms", "ok", "requests", "errors")}
            for level in levels}


def cell(results: dict, engine: str) -> float:
    """texts/s of ``engine`` in calls of ``BATCH`` sentences."""
    for c in results["cells"]:
        if c["engine"] == engine and c["batch_size"] == BATCH:
            return c["texts_per_s"]
    raise SystemExit(f"bench offline has no cell for {engine} at batch {BATCH}: {[c['engine'] for c in results['cells']]}")


ENGINES = ("pytorch", "optimum:int8", "optimum-quantized", "runtime:opt", "runtime:int8")


def one_run(args, index: int, texts: list[str]) -> dict:
    """One run of every speed measurement, side by side; its ratios. Models, logs and the bench's
    plots stay in ``--work``; ``--out``'s ``runN/`` gets the run's figures and the offline tables."""
    work, kept = args.work / f"run{index}", args.out / f"run{index}"
    work.mkdir(parents=True, exist_ok=True)
    kept.mkdir(parents=True, exist_ok=True)
    record: dict = {"load_before": uptime()}
    results = offline(args, work / "offline")
    for name in ("results.json", "results.md"):
        shutil.copy(work / "offline" / name, kept / f"offline-{name}")
    record["offline"] = {engine: cell(results, engine) for engine in ENGINES}
    record["load_after_offline"] = uptime()
    record["runtime_ceiling_b32"] = runtime_ceiling(args, texts)
    record["served"] = {f"{w}x{t}": served(args, texts, w, t, work) for w, t in ((1, args.threads), (args.threads, 1))}
    record["load_after"] = uptime()
    off, ceiling = record["offline"], record["runtime_ceiling_b32"]["texts_per_s"]
    record["ratios"] = {
        "runtime_int8_vs_pytorch_pipeline": off["runtime:int8"] / off["pytorch"],
        "runtime_int8_vs_optimum_same_int8_file": off["runtime:int8"] / off["optimum:int8"],
        "runtime_int8_vs_optimum_quantized": off["runtime:int8"] / off["optimum-quantized"],
        **{f"serve_{name}_c32_vs_runtime": levels["concurrency 32"]["texts_per_s"] / ceiling
           for name, levels in record["served"].items()},
    }
    (kept / "run.json").write_text(json.dumps(record, indent=2))
    return record


TARGETS = {"runtime_int8_vs_pytorch_pipeline": 2.5, "runtime_int8_vs_optimum_same_int8_file": 1.2,
           "serve_1x2_c32_vs_runtime": 0.8, "serve_2x1_c32_vs_runtime": 0.8}


def median_of(runs: list[dict], path: list[str]) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def markdown(summary: dict) -> str:
    """The summary as tables (quality, offline, served, ratios against the targets)."""
    runs = summary["runs"]
    lines = [f"# Token classification: quality, offline and served speed ({len(runs)} runs, medians)", "",
             (f"Artifact `{summary['artifact']}`; {summary['threads']} threads everywhere; calls of {BATCH} sentences "
              f"of `{summary['data']}` (names never seen in training); aggregation `{AGGREGATION}`."), ""]
    q = summary.get("quality")
    if q:
        lines += ["## Quality (fine-tuned packaged MiniLM, generated held-out file with unseen names)", "",
                  f"entity-F1 **{q['entity_f1']:.4f}** (target >= {QUALITY_TARGET}: {'met' if q['met'] else 'NOT met'}), "
                  f"precision {q['entity_precision']:.4f}, recall {q['entity_recall']:.4f}, token accuracy "
                  f"{q['token_accuracy']:.4f} on {q['n']} sentences ({q['train_rows']} generated training rows). "
                  "Per type: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(q["per_type_f1"].items())) + ".", "",
                  f"INT8: scheme `{q['int8']['scheme']}`, span agreement {q['int8']['span_agreement']}, entity-F1 "
                  f"{q['int8']['entity_f1']} (PyTorch {q['int8']['reference_entity_f1']}), servable "
                  f"{q['int8']['servable']}; default variant `{q['default_variant']}`. Stage seconds: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in q["seconds"].items()) + f". Load: {q['load_before']}", ""]
    lines += ["## Load (`uptime`) before and after each run", ""]
    lines += [f"- run {i}: {r['load_before']} / {r['load_after']}" for i, r in enumerate(runs, 1)]
    lines += ["", f"## Offline, sentences/s (calls of {BATCH} sentences)", "", "| engine | sentences/s |", "|---|---|"]
    lines += [f"| {engine} | {summary['offline'][engine]:.1f} |" for engine in ENGINES]
    lines += ["", "## Served (`/ner`, one sentence per request, closed loop), sentences/s", "",
              "| | c=1 | c=32 | p99 at c=32 ms |", "|---|---|---|---|"]
    for name, levels in summary["served"].items():
        workers, threads = name.split("x")
        lines.append(f"| {workers} worker(s) x {threads} thread(s) | {levels['concurrency 1']:.1f} | "
                     f"{levels['concurrency 32']:.1f} | {levels['p99 32']:.0f} |")
    lines += [f"| in-process runtime, calls of {BATCH} | - | {summary['runtime_ceiling_b32']:.1f} | - |", "",
              "## Ratios (within each run, then the median)", "", "| ratio | median | runs | target |",
              "|---|---|---|---|"]
    for key, value in summary["ratios"].items():
        each = ", ".join(f"{r['ratios'][key]:.2f}" for r in runs)
        target = TARGETS.get(key)
        verdict = "-" if target is None else f">= {target}: {'met' if value >= target else 'NOT met'}"
        lines.append(f"| {key} | {value:.2f} | {each} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smallest settings: a smoke test, not a measurement.")
    parser.add_argument("--artifact", type=Path, help="Reuse this artifact (skips the quality part).")
    parser.add_argument("--checkpoint", type=Path, help="Its checkpoint (with --artifact).")
    parser.add_argument("--data", type=Path, help="The generated test file (with --artifact).")
    parser.add_argument("--runs", type=int, help="Speed runs (default 3; --quick: 1).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, help="Seconds per offline cell and per load level (default 4).")
    parser.add_argument("--samples", type=int, help="Sentences drawn from the test file (default 512).")
    parser.add_argument("--out", type=Path, help="Results folder (default benchmarks/results/ner; --quick: a "
                        "temporary folder, so a smoke test never lands among the results).")
    parser.add_argument("--train-rows", type=int, help="Generated training rows (default 3000; --quick: 300).")
    parser.add_argument("--epochs", type=int, help="Fine-tuning epochs (default 2).")
    parser.add_argument("--work", type=Path, help="Folder for the corpus, checkpoint, artifact, logs and bench models (default runs/ner-bench, "
                        "which git ignores; --quick: OUT/work).")
    args = parser.parse_args()
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.train_rows:
        size["train_rows"] = args.train_rows
    if args.epochs:
        size["train"] = ["--epochs", str(args.epochs)]
    args.runs = args.runs or size["runs"]
    args.duration = args.duration or size["duration"]
    args.samples = args.samples or size["samples"]
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="ner-bench-quick-")) if args.quick else ROOT / "benchmarks/results/ner"
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = (args.work or (args.out / "work" if args.quick else ROOT / "runs" / "ner-bench")).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.artifact is None:
        quality_record = quality(args, size, args.work)
    else:
        if args.checkpoint is None or args.data is None:
            parser.error("--artifact needs --checkpoint and --data (the generated test file)")
        quality_record = None
    texts = sample_texts(str(args.data), "text", args.samples, 0)
    runs = [one_run(args, i, texts) for i in range(1, args.runs + 1)]
    summary = {"artifact": str(args.artifact), "data": str(args.data), "threads": args.threads, "quick": args.quick,
               "quality": quality_record, "runs": runs,
               "offline": {k: median_of(runs, ["offline", k]) for k in ENGINES},
               "runtime_ceiling_b32": median_of(runs, ["runtime_ceiling_b32", "texts_per_s"]),
               "served": {name: {"concurrency 1": median_of(runs, ["served", name, "concurrency 1", "texts_per_s"]),
                                 "concurrency 32": median_of(runs, ["served", name, "concurrency 32", "texts_per_s"]),
                                 "p99 32": median_of(runs, ["served", name, "concurrency 32", "p99_ms"])}
                          for name in runs[0]["served"]},
               "ratios": {k: median_of(runs, ["ratios", k]) for k in runs[0]["ratios"]}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    sys.stdout.write(markdown(summary) + f"\nwrote {args.out}/summary.md\n")


if __name__ == "__main__":
    main()

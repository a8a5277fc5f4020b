"""deploykit's training loop against transformers.Trainer, side by side in one run.

Same model, data, split, batch size, max length, learning-rate schedule and number of steps.
Reports samples/s of each and their ratio, the validation macro-F1 of each, and a TF-IDF +
logistic-regression baseline's macro-F1 on the same split (validation and held-out test).

    python benchmarks/train_throughput.py --max-train-samples 4000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tfidf_baseline(splits) -> dict[str, float]:
    from deploykit.baseline import tfidf_baseline as fit_and_score

    scores = fit_and_score(splits.train, {"validation": splits.validation, "test": splits.test},
                           splits.label_names)
    return {name: metrics["macro_f1"] for name, metrics in scores.items()}


def run_deploykit(cfg) -> dict[str, float]:
    from deploykit import train

    start = time.perf_counter()
    best = train.run(cfg)
    elapsed = time.perf_counter() - start
    rows = [json.loads(l) for l in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    steps = max(r["step"] for r in rows)
    evals = [r for r in rows if r["type"] == "eval"]
    return {"seconds": elapsed, "steps": steps, "samples_per_s": steps * cfg.batch_size / elapsed,
            "final_val_macro_f1": evals[-1]["macro_f1"],
            "best_val_macro_f1": json.loads((best / "metrics.json").read_text())["macro_f1"]}


def run_trainer(cfg, splits) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    from deploykit.scoring import classification_metrics, predict_logits
    from deploykit.train import resolve_model

    source = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(cfg.seed)
    names = splits.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})

    def dataset(split):
        ds = Dataset.from_dict({"text": split.texts, "label": split.labels})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.max_length),
                      batched=True, remove_columns=["text"])

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type="linear", max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=50,
        eval_strategy="no", save_strategy="no", report_to=[], dataloader_drop_last=True,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(splits.train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    result = trainer.train()
    elapsed = time.perf_counter() - start
    # Scored by the same function as deploykit's own validation passes.
    logits = predict_logits(trainer.model, tokenizer, splits.validation.texts, max_length=cfg.max_length,
                            batch_size=cfg.eval_batch_size)
    metrics = classification_metrics(splits.validation.labels, np.argmax(logits, -1).tolist(), names)
    return {"seconds": elapsed, "steps": result.global_step,
            "samples_per_s": result.global_step * cfg.batch_size / elapsed,
            "final_val_macro_f1": metrics["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="tweets")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.md")
    args = parser.parse_args()

    import torch

    from deploykit import data
    from deploykit.config import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="dk-bench-"))
    cfg = TrainConfig(data=args.data, model=args.model, out=str(work / "deploykit"),
                      max_train_samples=args.max_train_samples, epochs=args.epochs, max_steps=args.max_steps)
    splits = data.load_splits(cfg)
    baseline = tfidf_baseline(splits)
    ours = run_deploykit(cfg)
    theirs = run_trainer(cfg, splits)
    ratio = ours["samples_per_s"] / theirs["samples_per_s"]
    lines = [
        "# Training throughput: deploykit vs transformers.Trainer",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Data `{args.data}`, "
        f"{len(splits.train)} training rows, model `{args.model}`, batch {cfg.batch_size}, "
        f"max length {cfg.max_length}, lr {cfg.lr}, {ours['steps']} steps each, one process, same run.",
        "",
        "| system | steps | seconds | samples/s | ratio to Trainer | validation macro-F1 (final) |",
        "|---|---|---|---|---|---|",
        f"| deploykit train | {ours['steps']} | {ours['seconds']:.1f} | {ours['samples_per_s']:.1f} | "
        f"{ratio:.2f} | {ours['final_val_macro_f1']:.4f} |",
        f"| transformers.Trainer | {theirs['steps']} | {theirs['seconds']:.1f} | {theirs['samples_per_s']:.1f} | "
        f"1.00 | {theirs['final_val_macro_f1']:.4f} |",
        "",
        f"TF-IDF + logistic regression on the same {len(splits.train)} rows: validation macro-F1 "
        f"{baseline['validation']:.4f}, held-out test macro-F1 {baseline['test']:.4f}.",
        "",
        "deploykit's time includes its periodic validation passes and checkpoint writes; the Trainer "
        "ran with evaluation and saving off, so the ratio is conservative for deploykit.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

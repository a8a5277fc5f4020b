"""Evaluation of a checkpoint: metrics, per-class report, length buckets, error cases, plots.

``deploykit evaluate CHECKPOINT --out DIR`` writes, atomically:

    metrics.json   accuracy, macro_f1, weighted_f1, per_class, n, by_length, split, checkpoint
    errors.jsonl   text, gold, predicted, confidence - the most confident mistakes first
    confusion.png  the confusion matrix
    length.png     accuracy and macro-F1 per input-length bucket
    report.md      a short human-readable summary of all of the above
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint, data
from deploykit.config import DataConfig, EvalConfig
from deploykit.scoring import classification_metrics, predict_logits, softmax

log = logging.getLogger(__name__)

LENGTH_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _rows(cfg: EvalConfig, label_names: list[str]) -> tuple[data.Split, DataConfig]:
    """The rows to score, with label ids mapped onto the checkpoint's label map."""
    dcfg = data.rebuild_config(checkpoint.train_config(cfg.checkpoint), data=cfg.data,
                               text_column=cfg.text_column, label_column=cfg.label_column)
    rows, _ = data.held_out(dcfg, cfg.split, label_names)
    return rows, dcfg


def length_buckets(lengths: list[int], gold: list[int], predicted: list[int],
                   label_names: list[str], max_length: int) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 per bucket of input length in tokens.

    Returns:
        One dict per non-empty bucket: tokens (a "lo-hi" range), n, accuracy, macro_f1.
    """
    edges = [0] + [e for e in LENGTH_EDGES if e < max_length] + [max_length + 1]
    lengths_arr, gold_arr, pred_arr = np.array(lengths), np.array(gold), np.array(predicted)
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (lengths_arr >= lo) & (lengths_arr < hi)
        if not mask.any():
            continue
        m = classification_metrics(gold_arr[mask].tolist(), pred_arr[mask].tolist(), label_names)
        buckets.append({"tokens": f"{lo}-{hi - 1}", "n": int(mask.sum()),
                        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
    return buckets


def error_cases(texts: list[str], gold: list[int], probs: np.ndarray, label_names: list[str],
                limit: int) -> list[dict[str, Any]]:
    """The misclassified rows, most confident mistakes first."""
    predicted = probs.argmax(-1)
    wrong = [i for i in range(len(texts)) if predicted[i] != gold[i]]
    wrong.sort(key=lambda i: -probs[i, predicted[i]])
    return [{"text": texts[i], "gold": label_names[gold[i]], "predicted": label_names[predicted[i]],
             "confidence": round(float(probs[i, predicted[i]]), 6)} for i in wrong[:limit]]


def _plots(out: Path, gold: list[int], predicted: list[int], label_names: list[str],
           buckets: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(gold, predicted, labels=list(range(len(label_names))),
                                            display_labels=label_names, ax=ax, colorbar=False)
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(buckets))
    ax.bar(x - 0.2, [b["accuracy"] for b in buckets], 0.4, label="accuracy")
    ax.bar(x + 0.2, [b["macro_f1"] for b in buckets], 0.4, label="macro-F1")
    ax.set_xticks(x, [f"{b['tokens']}\n(n={b['n']})" for b in buckets])
    ax.set_xlabel("input length (tokens)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=110)
    plt.close(fig)


def _report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} rows).", "",
             "| accuracy | macro-F1 | weighted-F1 |", "|---|---|---|",
             f"| {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} | {metrics['weighted_f1']:.4f} |", "",
             "## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "## By input length", "", "| tokens | n | accuracy | macro-F1 |", "|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    lines += ["", "![confusion](confusion.png) ![length](length.png)", "",
              f"## Most confident mistakes ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted | confidence |", "|---|---|---|---|"]
    for e in errors[:10]:
        text = e["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {text[:100]} | {e['gold']} | {e['predicted']} | {e['confidence']:.3f} |")
    return "\n".join(lines) + "\n"


def run(cfg: EvalConfig) -> Path:
    """Score a checkpoint on a split and write the evaluation folder.

    Args:
        cfg: The evaluation config (see ``deploykit evaluate --help``).

    Returns:
        The output folder.

    Raises:
        BadInputError: Not a checkpoint, or a bad data source or split.
    """
    ckpt = checkpoint.validate(cfg.checkpoint)
    label_names = checkpoint.labels(ckpt)
    split, data_cfg = _rows(cfg, label_names)
    model, tokenizer = checkpoint.load_model(ckpt)
    log.info("scoring %d rows of %s (%s)", len(split), data_cfg.data, cfg.split)
    logits = predict_logits(model, tokenizer, split.texts, max_length=data_cfg.max_length,
                            batch_size=cfg.batch_size, progress=True)
    probs = softmax(logits)
    predicted = probs.argmax(-1).tolist()
    lengths = [len(ids) for ids in tokenizer(split.texts, truncation=True, max_length=data_cfg.max_length)["input_ids"]]
    metrics = classification_metrics(split.labels, predicted, label_names)
    metrics["by_length"] = length_buckets(lengths, split.labels, predicted, label_names, data_cfg.max_length)
    metrics.update(split=cfg.split, data=data_cfg.data, checkpoint=str(ckpt))
    errors = error_cases(split.texts, split.labels, probs, label_names, cfg.max_errors)

    with checkpoint.atomic_folder(cfg.out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(tmp / "errors.jsonl", "w") as fh:
            for row in errors:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        _plots(tmp, split.labels, predicted, label_names, metrics["by_length"])
        (tmp / "report.md").write_text(_report(metrics, errors))
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d rows -> %s", cfg.split, metrics["accuracy"],
             metrics["macro_f1"], metrics["n"], cfg.out)
    return Path(cfg.out)

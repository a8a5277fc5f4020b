"""text-classification's evaluation: metrics, per-class report, length buckets, slices, the most
confident mistakes and plots (the shared stage, ``deploykit.evaluation``, writes the folder).

    metrics.json   accuracy, macro_f1, weighted_f1, per_class, n, by_length, by_slice
    errors.jsonl   text, gold, predicted, confidence - the most confident mistakes first
    confusion.png  the confusion matrix
    length.png     accuracy and macro-F1 per input-length bucket
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.evaluation import length_groups, length_plot, slice_groups, slice_table
from deploykit.tasks.classification.data import held_out
from deploykit.tasks.classification.scoring import classification_metrics, predict_logits, softmax
from deploykit.tasks.classification.train import checkpoint_labels

log = logging.getLogger(__name__)


class Evaluation:
    """Scores a classifier checkpoint on its held-out rows (see ``deploykit.evaluation.Evaluation``)."""

    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg
        self.label_names = checkpoint_labels(ckpt)

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg, label_names = self.cfg, self.dcfg, self.label_names
        split, _ = held_out(dcfg, cfg.split, label_names, cfg.slice_column)
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        log.info("scoring %d rows of %s (%s)", len(split), dcfg.data, cfg.split)
        logits = predict_logits(model, tokenizer, split.texts, max_length=dcfg.max_length,
                                batch_size=cfg.batch_size, progress=True)
        probs = softmax(logits)
        predicted = probs.argmax(-1).tolist()
        lengths = [len(ids) for ids in tokenizer(split.texts, truncation=True, max_length=dcfg.max_length)["input_ids"]]
        metrics = classification_metrics(split.labels, predicted, label_names)
        metrics["by_length"] = length_buckets(lengths, split.labels, predicted, label_names, dcfg.max_length)
        if cfg.slice_column:
            metrics["slice_column"] = cfg.slice_column
            metrics["by_slice"] = classification_slices(split.slices, split.labels, predicted, label_names)
        self.gold, self.predicted = split.labels, predicted
        return metrics, error_cases(split.texts, split.labels, probs, label_names, cfg.max_errors)

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        _plots(folder, self.gold, self.predicted, self.label_names, metrics["by_length"])

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return _report(metrics, errors)


def summary(metrics: dict[str, Any]) -> str:
    """The split, its rows, accuracy, macro-F1 and weighted-F1 on one line."""
    return (f"{metrics['split']} ({metrics['n']} rows): accuracy {metrics['accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f}, weighted-F1 {metrics['weighted_f1']:.4f}")


def length_buckets(lengths: list[int], gold: list[int], predicted: list[int],
                   label_names: list[str], max_length: int) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 per bucket of input length in tokens.

    Returns:
        One dict per non-empty bucket: tokens (a "lo-hi" range), n, accuracy, macro_f1.
    """
    gold_arr, pred_arr = np.array(gold), np.array(predicted)
    buckets = []
    for tokens, index in length_groups(lengths, max_length).items():
        m = classification_metrics(gold_arr[index].tolist(), pred_arr[index].tolist(), label_names)
        buckets.append({"tokens": tokens, "n": len(index), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
    return buckets


def classification_slices(slices: list[str] | None, gold: list[int], predicted: list[int],
                          label_names: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1, weighted-F1 and n per value of the slice column."""
    gold_arr, pred_arr = np.array(gold), np.array(predicted)
    out = {}
    for value, index in slice_groups(slices).items():
        m = classification_metrics(gold_arr[index].tolist(), pred_arr[index].tolist(), label_names)
        out[value] = {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
    return out


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
    length_plot(out, buckets, [("accuracy", "accuracy", 1.0), ("macro_f1", "macro-F1", 1.0)], "input length (tokens)")


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
    lines += slice_table(metrics, ("accuracy", "macro_f1", "weighted_f1"))
    lines += ["", "![confusion](confusion.png) ![length](length.png)", "",
              f"## Most confident mistakes ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted | confidence |", "|---|---|---|---|"]
    for e in errors[:10]:
        text = e["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {text[:100]} | {e['gold']} | {e['predicted']} | {e['confidence']:.3f} |")
    return "\n".join(lines) + "\n"

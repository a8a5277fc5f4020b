"""text-classification's evaluation: metrics, per-class report, length buckets, slices, the most
confident mistakes and plots (the shared stage, ``deploykit.evaluation``, writes the folder).

    metrics.json   accuracy, macro_f1, weighted_f1, per_class, n, by_length, by_slice
    errors.jsonl   text, gold, predicted, confidence - the most confident mistakes first
    confusion.png  the confusion matrix
    length.png     accuracy and macro-F1 per input-length bucket

A multi-label checkpoint is scored at its thresholds (``config.json``'s, recorded by training):
micro, macro, weighted and samples F1, subset accuracy, Hamming loss, per-label precision, recall,
F1, support and confusion (``per_label_confusion``: tn, fp, fn, tp); errors.jsonl holds the rows
whose label set is wrong, the most confidently wrong decision first (``confidence``: the
probability of a false label, or one minus that of a missed one); length buckets and slices report
micro-F1 and subset accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.evaluation import length_groups, length_plot, slice_groups, slice_table
from deploykit.tasks.classification.data import encode, held_out, multi_hot
from deploykit.tasks.classification.decisions import Decisions
from deploykit.tasks.classification.scoring import (classification_metrics, multi_label_metrics, predict_logits,
                                                    ranking_metrics, score_metrics)
from deploykit.tasks.classification.train import checkpoint_head

log = logging.getLogger(__name__)


class Evaluation:
    """Scores a classifier checkpoint on its held-out rows (see ``deploykit.evaluation.Evaluation``)."""

    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg
        self.head = checkpoint_head(ckpt)
        self.label_names = list(self.head.labels)
        self.decisions = Decisions.of(self.head, self.label_names)

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg, label_names = self.cfg, self.dcfg, self.label_names
        split, _ = held_out(dcfg, cfg.split, label_names, cfg.slice_column)
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        log.info("scoring %d rows of %s (%s)", len(split), dcfg.data, cfg.split)
        logits = predict_logits(model, tokenizer, split.texts, max_length=dcfg.max_length,
                                batch_size=cfg.batch_size, progress=True, truncation=dcfg.truncation)
        probs, predicted = self.decisions.scores(logits), self.decisions.predicted(logits)
        lengths = [len(ids) for ids in encode(tokenizer, split.texts, dcfg.max_length, dcfg.truncation)["input_ids"]]
        if self.decisions.score_head:
            gold = np.asarray(split.labels, dtype=np.float64)
            scored: SingleLabelScores = ScoreScores(label_names)
            errors = score_errors(split.texts, gold, predicted, cfg.max_errors)
        elif self.decisions.multi_label:
            gold = multi_hot(split.labels, len(label_names))
            scored = MultiLabelScores(label_names)
            errors = multi_label_errors(split.texts, gold, probs, predicted, label_names, cfg.max_errors)
        else:
            gold = np.asarray(split.labels)
            scored = SingleLabelScores(label_names)
            errors = error_cases(split.texts, split.labels, probs, label_names, cfg.max_errors)
        metrics = scored.metrics(gold, predicted)
        if self.decisions.score_head and split.groups is not None:  # a query id column: rank per query
            metrics.update(ranking_metrics(split.groups, gold, predicted))
        metrics["by_length"] = bucket_metrics(lengths, gold, predicted, scored, dcfg.max_length)
        if cfg.slice_column:
            metrics["slice_column"] = cfg.slice_column
            metrics["by_slice"] = {value: {**scored.brief(gold[index], predicted[index]), "n": len(index)}
                                   for value, index in slice_groups(split.slices).items()}
        self.gold, self.predicted = gold, predicted
        return metrics, errors

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        if self.decisions.multi_label or self.decisions.score_head:
            _length_plot(folder, metrics["by_length"], (ScoreScores if self.decisions.score_head
                                                        else MultiLabelScores).BRIEF)
            return
        _plots(folder, self.gold.tolist(), self.predicted.tolist(), self.label_names, metrics["by_length"])

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return _report(metrics, errors)


class SingleLabelScores:
    """Single-label metrics of id arrays: the full set, and the brief one of a bucket or slice."""

    BRIEF = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"))

    def __init__(self, label_names: list[str]) -> None:
        self.label_names = label_names

    def metrics(self, gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        return classification_metrics(gold.tolist(), predicted.tolist(), self.label_names)

    def brief(self, gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        m = self.metrics(gold, predicted)
        return {key: m[key] for key, _ in self.BRIEF}


class MultiLabelScores(SingleLabelScores):
    """Multi-label metrics of 0/1 matrices, with each label's confusion counts."""

    BRIEF = (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("subset_accuracy", "subset accuracy"))

    def metrics(self, gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        from sklearn.metrics import multilabel_confusion_matrix

        metrics = multi_label_metrics(gold, predicted, self.label_names)
        matrices = multilabel_confusion_matrix(gold, predicted.astype(int), labels=list(range(len(self.label_names))))
        metrics["per_label_confusion"] = {name: dict(zip(("tn", "fp", "fn", "tp"), map(int, m.ravel())))
                                          for name, m in zip(self.label_names, matrices)}
        return metrics


class ScoreScores(SingleLabelScores):
    """A score head's metrics (relevance, similarity): Pearson and Spearman with the gold scores."""

    BRIEF = (("spearman", "Spearman"), ("pearson", "Pearson"))

    def metrics(self, gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        return score_metrics(gold, predicted)


def score_errors(texts: list[Any], gold: np.ndarray, scores: np.ndarray, limit: int) -> list[dict[str, Any]]:
    """A score head's worst rows: the largest distance between score and gold first
    (``{"text", "gold", "predicted", "confidence"}``, ``confidence`` being that distance)."""
    distance = np.abs(scores - gold)
    return [{"text": list(texts[i]) if isinstance(texts[i], tuple) else texts[i], "gold": float(gold[i]),
             "predicted": round(float(scores[i]), 6), "confidence": round(float(distance[i]), 6)}
            for i in np.argsort(-distance, kind="stable")[:limit]]


def summary(metrics: dict[str, Any]) -> str:
    """The split, its rows and its headline metrics on one line."""
    if "spearman" in metrics:
        ranking = (f", NDCG@10 {metrics['ndcg_at_10']:.4f}, MRR@10 {metrics['mrr_at_10']:.4f} over "
                   f"{metrics['queries']} queries" if "ndcg_at_10" in metrics else "")
        return (f"{metrics['split']} ({metrics['n']} rows): Spearman {metrics['spearman']:.4f}, Pearson "
                f"{metrics['pearson']:.4f}{ranking}")
    if "micro_f1" in metrics:
        return (f"{metrics['split']} ({metrics['n']} rows): micro-F1 {metrics['micro_f1']:.4f}, macro-F1 "
                f"{metrics['macro_f1']:.4f}, samples-F1 {metrics['samples_f1']:.4f}, subset accuracy "
                f"{metrics['subset_accuracy']:.4f}, Hamming loss {metrics['hamming_loss']:.4f}")
    return (f"{metrics['split']} ({metrics['n']} rows): accuracy {metrics['accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f}, weighted-F1 {metrics['weighted_f1']:.4f}")


def length_buckets(lengths: list[int], gold: list[int], predicted: list[int],
                   label_names: list[str], max_length: int) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 per bucket of input length in tokens (single-label).

    Returns:
        One dict per non-empty bucket: tokens (a "lo-hi" range), n, accuracy, macro_f1.
    """
    return bucket_metrics(lengths, np.array(gold), np.array(predicted), SingleLabelScores(label_names), max_length)


def bucket_metrics(lengths: list[int], gold: np.ndarray, predicted: np.ndarray, scored: SingleLabelScores,
                   max_length: int) -> list[dict[str, Any]]:
    """The brief metrics (``scored.BRIEF``) per bucket of input length in tokens."""
    return [{"tokens": tokens, "n": len(index), **scored.brief(gold[index], predicted[index])}
            for tokens, index in length_groups(lengths, max_length).items()]


def multi_label_errors(texts: list[str], gold: np.ndarray, probs: np.ndarray, predicted: np.ndarray,
                       label_names: list[str], limit: int) -> list[dict[str, Any]]:
    """The rows whose label set is wrong, the most confidently wrong decision first.

    Returns:
        ``{"text", "gold", "predicted", "confidence"}`` rows: gold and predicted label lists, and
        the worst wrong decision's confidence (a false label's probability, or one minus a missed
        label's).
    """
    wrong_decision = predicted.astype(bool) != gold.astype(bool)
    confidence = np.where(wrong_decision, np.abs(probs - gold), 0.0)
    worst = confidence.max(axis=1) if len(texts) else np.zeros(0)
    wrong = [i for i in np.argsort(-worst, kind="stable") if wrong_decision[i].any()]
    return [{"text": texts[i], "gold": [label_names[j] for j in np.flatnonzero(gold[i])],
             "predicted": [label_names[j] for j in np.flatnonzero(predicted[i])],
             "confidence": round(float(worst[i]), 6)} for i in wrong[:limit]]


def error_cases(texts: list[str], gold: list[int], probs: np.ndarray, label_names: list[str],
                limit: int) -> list[dict[str, Any]]:
    """The misclassified rows, most confident mistakes first."""
    predicted = probs.argmax(-1)
    wrong = [i for i in range(len(texts)) if predicted[i] != gold[i]]
    wrong.sort(key=lambda i: -probs[i, predicted[i]])
    return [{"text": texts[i], "gold": label_names[gold[i]], "predicted": label_names[predicted[i]],
             "confidence": round(float(probs[i, predicted[i]]), 6)} for i in wrong[:limit]]


def _length_plot(out: Path, buckets: list[dict[str, Any]], brief: tuple) -> None:
    length_plot(out, buckets, [(key, name, 1.0) for key, name in brief[:2]], "input length (tokens)")


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
    _length_plot(out, buckets, SingleLabelScores.BRIEF)


def _report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    if "spearman" in metrics:
        return _score_report(metrics, errors)
    multi = "micro_f1" in metrics
    head = (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1"),
            ("subset_accuracy", "subset accuracy"), ("hamming_loss", "Hamming loss")) if multi else \
        SingleLabelScores.BRIEF
    brief = (MultiLabelScores if multi else SingleLabelScores).BRIEF
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} rows).", "",
             "| " + " | ".join(name for _, name in head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(f"{metrics[key]:.4f}" for key, _ in head) + " |", "",
             f"## Per {'label' if multi else 'class'}", "", "| label | precision | recall | F1 | support |"
             + (" tn | fp | fn | tp |" if multi else ""), "|---|---|---|---|---|" + ("---|" * 4 if multi else "")]
    for label, m in metrics["per_class"].items():
        counts = metrics["per_label_confusion"][label] if multi else {}
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
                     + "".join(f" {counts[k]} |" for k in ("tn", "fp", "fn", "tp") if multi))
    lines += ["", "## By input length", "", "| tokens | n | " + " | ".join(name for _, name in brief) + " |",
              "|---|---|" + "---|" * len(brief)]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | " + " | ".join(f"{b[key]:.4f}" for key, _ in brief) + " |")
    lines += slice_table(metrics, tuple(key for key, _ in brief))
    lines += ["", ("" if multi else "![confusion](confusion.png) ") + "![length](length.png)", "",
              f"## Most confident mistakes ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted | confidence |", "|---|---|---|---|"]
    for e in errors[:10]:
        text = e["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {text[:100]} | {e['gold']} | {e['predicted']} | {e['confidence']:.3f} |")
    return "\n".join(lines) + "\n"


def _score_report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    head = [(k, n) for k, n in (("spearman", "Spearman"), ("pearson", "Pearson"), ("ndcg_at_10", "NDCG@10"),
                                ("mrr_at_10", "MRR@10"), ("queries", "queries")) if k in metrics]
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} rows).", "",
             "| " + " | ".join(n for _, n in head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(f"{metrics[k]:.4f}" if k != "queries" else str(metrics[k]) for k, _ in head) + " |",
             "", "## By input length", "", "| tokens | n | Spearman | Pearson |", "|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | {b['spearman']:.4f} | {b['pearson']:.4f} |")
    lines += slice_table(metrics, ("spearman", "pearson"))
    lines += ["", "![length](length.png)", "", f"## Largest errors ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted |", "|---|---|---|"]
    for e in errors[:10]:
        text = " / ".join(e["text"]) if isinstance(e["text"], list) else e["text"]
        lines.append(f"| {text[:100].replace('|', '/')} | {e['gold']:.3f} | {e['predicted']:.3f} |")
    return "\n".join(lines) + "\n"

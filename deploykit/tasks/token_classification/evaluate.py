"""token-classification's evaluation: entity metrics per type and overall (seqeval), the confusion between
entity types and with O, results per length bucket and per slice, the worst sentences (the shared
stage, ``deploykit.evaluation``, writes the folder).

    metrics.json   entity_f1/precision/recall, token_accuracy, macro_f1, weighted_f1, per_class, n,
                   confusion ({gold type: {predicted type: words}}), by_length, by_slice
    errors.jsonl   text, gold, predicted (spans with their words, side by side), confidence, errors
                   - the sentences with the most wrong entities first
    confusion.png  the word-level confusion of entity types (O included)
    length.png     entity-F1 and token accuracy per input-length bucket
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.evaluation import length_groups, length_plot, slice_groups, slice_table
from deploykit.tasks.token_classification import aggregation, data, scoring
from deploykit.tasks.token_classification.head import OUTSIDE, entity_type
from deploykit.tasks.token_classification.train import checkpoint_labels, encode

log = logging.getLogger(__name__)

HEADLINE = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


class Evaluation:
    """Scores a token-classification checkpoint on its held-out rows (see ``deploykit.evaluation.Evaluation``)."""

    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg
        self.labels = checkpoint_labels(ckpt)

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg, labels = self.cfg, self.dcfg, self.labels
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        backend = data.backend(tokenizer)
        split, _ = data.held_out(dcfg, cfg.split, backend, labels, cfg.slice_column)
        log.info("scoring %d sentences of %s (%s)", len(split), dcfg.data, cfg.split)
        rows = encode(tokenizer, split.texts, dcfg.max_length, dcfg.stride)
        logits = scoring.window_logits(model, tokenizer, rows, batch_size=cfg.batch_size, progress=True)
        found = scoring.decode(split.texts, rows, logits, cfg.aggregation, labels, aggregation.WordRule.of(backend))
        predicted = [aggregation.spans(f) for f in found]
        words = data.words(backend, split.texts)
        metrics = scoring.entity_metrics(words, split.entities, predicted)
        metrics["aggregation"] = cfg.aggregation
        metrics["confusion"] = confusion(words, split.entities, predicted)
        lengths = [sum(1 for s in e.special_tokens_mask if not s) for e in backend.encode_batch(split.texts)]
        metrics["by_length"] = self._groups(length_groups(lengths, max(dcfg.max_length, max(lengths, default=1))),
                                            words, split.entities, predicted, "tokens")
        if cfg.slice_column:
            metrics["slice_column"] = cfg.slice_column
            metrics["by_slice"] = {row.pop("value"): row for row in self._groups(
                slice_groups(split.slices), words, split.entities, predicted, "value")}
        return metrics, worst(split.texts, split.entities, found, cfg.max_errors)

    @staticmethod
    def _groups(groups: dict[str, np.ndarray], words: list, gold: list, predicted: list, key: str) -> list[dict[str, Any]]:
        out = []
        for name, index in groups.items():
            m = scoring.entity_metrics([words[i] for i in index], [gold[i] for i in index], [predicted[i] for i in index])
            out.append({key: name, "n": len(index), **{k: m[k] for k in HEADLINE}})
        return out

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        _confusion_plot(folder, metrics["confusion"])
        length_plot(folder, metrics["by_length"], [("entity_f1", "entity-F1", 1.0),
                                                   ("token_accuracy", "token accuracy", 1.0)], "input length (tokens)")

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return _report(metrics, errors)


def summary(metrics: dict[str, Any]) -> str:
    """The split, its sentences, entity precision/recall/F1 and token accuracy on one line."""
    return (f"{metrics['split']} ({metrics['n']} sentences): entity-F1 {metrics['entity_f1']:.4f} (precision "
            f"{metrics['entity_precision']:.4f}, recall {metrics['entity_recall']:.4f}), token accuracy "
            f"{metrics['token_accuracy']:.4f}")


def confusion(words: list, gold: list, predicted: list) -> dict[str, dict[str, int]]:
    """Words by gold entity type and predicted entity type (``O`` included): {gold: {predicted: n}}."""
    table: dict[str, dict[str, int]] = {}
    for w, g, p in zip(words, scoring.word_tag_lists(words, gold), scoring.word_tag_lists(words, predicted)):
        for gold_tag, predicted_tag in zip(g, p):
            row = table.setdefault(entity_type(gold_tag), {})
            row[entity_type(predicted_tag)] = row.get(entity_type(predicted_tag), 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def _spans(text: str, found: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    return [{"type": kind, "start": start, "end": end, "word": text[start:end]} for kind, start, end in found]


def worst(texts: list[str], gold: list[list[tuple[str, int, int]]], found: list[list[dict[str, Any]]],
          limit: int) -> list[dict[str, Any]]:
    """The sentences with wrong entities, the most wrong first (then the least confident): gold and
    predicted spans side by side, ``confidence`` the lowest predicted entity score."""
    rows = []
    for text, g, f in zip(texts, gold, found):
        predicted = aggregation.spans(f)
        wrong = len(set(g) ^ set(predicted))
        if wrong:
            confidence = min((e["score"] for e in f), default=1.0)
            rows.append((wrong, confidence, text, g, predicted))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [{"text": text, "gold": _spans(text, g), "predicted": _spans(text, p), "confidence": round(float(c), 6),
             "errors": wrong} for wrong, c, text, g, p in rows[:limit]]


def _confusion_plot(out: Path, table: dict[str, dict[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(set(table) | {p for row in table.values() for p in row}, key=lambda k: (k != OUTSIDE, k))
    matrix = np.array([[table.get(g, {}).get(p, 0) for p in kinds] for g in kinds])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(kinds), 1 + 0.6 * len(kinds)))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(len(kinds)), kinds, rotation=45)
    ax.set_yticks(range(len(kinds)), kinds)
    for i in range(len(kinds)):
        for j in range(len(kinds)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted (words)")
    ax.set_ylabel("gold (words)")
    ax.set_title("entity types")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} sentences); entities read with "
             f"aggregation `{metrics['aggregation']}`, scored by seqeval (strict IOB2).", "",
             "| entity-F1 | precision | recall | token accuracy | macro-F1 |", "|---|---|---|---|---|",
             f"| {metrics['entity_f1']:.4f} | {metrics['entity_precision']:.4f} | {metrics['entity_recall']:.4f} | "
             f"{metrics['token_accuracy']:.4f} | {metrics['macro_f1']:.4f} |", "",
             "## Per entity type", "", "| type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for kind, m in metrics["per_class"].items():
        lines.append(f"| {kind} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    kinds = sorted(metrics["confusion"], key=lambda k: (k != OUTSIDE, k))
    lines += ["", "## Confusion (words; rows gold, columns predicted)", "",
              "| gold \\ predicted | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for g in kinds:
        lines.append(f"| {g} | " + " | ".join(str(metrics["confusion"][g].get(p, 0)) for p in kinds) + " |")
    lines += ["", "## By input length", "", "| tokens | n | entity-F1 | token accuracy |", "|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | {b['entity_f1']:.4f} | {b['token_accuracy']:.4f} |")
    lines += slice_table(metrics, HEADLINE)
    lines += ["", "![confusion](confusion.png) ![length](length.png)", "",
              f"## Worst sentences ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted |", "|---|---|---|"]
    for e in errors[:10]:
        def show(spans: list[dict[str, Any]]) -> str:
            return ", ".join(f"{s['type']} {_cell(s['word'])!r}" for s in spans) or "-"
        lines.append(f"| {_cell(e['text'])[:100]} | {show(e['gold'])} | {show(e['predicted'])} |")
    return "\n".join(lines) + "\n"

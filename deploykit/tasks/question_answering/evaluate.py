"""question-answering's evaluation: SQuAD exact match and F1 (the official normalisation), HasAns/NoAns
and the best null threshold when some questions are unanswerable, results per context-length bucket
and per slice, the worst questions (the shared stage, ``deploykit.evaluation``, writes the folder).

    metrics.json   exact_match, f1, n; has_ans_*/no_ans_* and best_f1(_threshold), best_exact(_threshold);
                   tuned_* (with the validation split's null threshold, from the checkpoint); by_length,
                   by_slice; rules (max_answer_len, align_to_words, no-answer rule)
    errors.jsonl   text (the question), context, gold, predicted, confidence, f1 - lowest F1 first, then
                   the most confident
    length.png     EM and F1 per context-length bucket (tokens)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.evaluation import length_groups, length_plot, slice_groups, slice_table
from deploykit.tasks.question_answering import answers, data, scoring, squad
from deploykit.tasks.question_answering.train import encode, fit_questions
from deploykit.tasks.token_classification.data import backend

log = logging.getLogger(__name__)

HEADLINE = ("exact_match", "f1")


def validation_threshold(ckpt: Path) -> float | None:
    """The best null threshold training found on the validation split (None: no unanswerable questions)."""
    try:
        value = json.loads((ckpt / checkpoint.METRICS_FILE).read_text()).get("best_f1_threshold")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


class Evaluation:
    """Scores a question-answering checkpoint on its held-out questions (see ``deploykit.evaluation.Evaluation``)."""

    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg = self.cfg, self.dcfg
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        split, _ = data.held_out(dcfg, cfg.split, cfg.slice_column)
        log.info("scoring %d questions of %s (%s)", len(split), dcfg.data, cfg.split)
        split, skipped = fit_questions(tokenizer, split, dcfg.max_length, dcfg.doc_stride, cfg.max_question_len,
                                       dcfg.skip_bad_rows, f"{dcfg.data} ({cfg.split})")
        rows = encode(tokenizer, split, dcfg.max_length, dcfg.doc_stride)
        starts, ends = scoring.window_logits(model, tokenizer, rows, batch_size=cfg.batch_size, progress=True)
        rules = answers.Rules(max_answer_len=cfg.max_answer_len, align_to_words=cfg.align_to_words)
        decoded = scoring.decode_all(split, rows, starts, ends, rules, tokenizer.cls_token_id)
        null_rule = 0.0 if dcfg.allow_no_answer else None  # the pipeline's handle_impossible_answer
        metrics = scoring.qa_metrics(split, decoded, null_rule)
        if skipped:
            metrics["skipped_rows"] = skipped
        threshold = validation_threshold(self.checkpoint)
        if threshold is not None:
            tuned = scoring.qa_metrics(split, decoded, threshold)
            metrics.update({"tuned_threshold": threshold, **{f"tuned_{k}": tuned[k] for k in HEADLINE}})
        metrics["rules"] = {"max_answer_len": rules.max_answer_len, "align_to_words": rules.align_to_words,
                            "no_answer": "pipeline (handle_impossible_answer)" if null_rule is not None else "never",
                            "doc_stride": dcfg.doc_stride, "max_length": dcfg.max_length}
        predicted = [answers.best_text(d, null_rule) for d in decoded]
        golds = [split.texts(i) for i in range(len(split))]
        em, f1 = squad.question_scores(golds, predicted)
        lengths = [len(e.ids) for e in backend(tokenizer).encode_batch(split.contexts, add_special_tokens=False)]
        top = max([dcfg.max_length, *lengths])
        metrics["by_length"] = self._groups(length_groups(lengths, top), em, f1, "tokens")
        if cfg.slice_column:
            metrics["slice_column"] = cfg.slice_column
            metrics["by_slice"] = {row.pop("value"): row for row in self._groups(slice_groups(split.slices), em, f1,
                                                                                  "value")}
        confidence = [d.answers[0]["score"] if d.answers else 0.0 for d in decoded]
        return metrics, worst(split, predicted, confidence, f1, cfg.max_errors)

    @staticmethod
    def _groups(groups: dict[str, np.ndarray], em: list[float], f1: list[float], key: str) -> list[dict[str, Any]]:
        return [{key: name, "n": len(index), "exact_match": float(np.mean([em[i] for i in index])),
                 "f1": float(np.mean([f1[i] for i in index]))} for name, index in groups.items()]

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        length_plot(folder, metrics["by_length"], [("exact_match", "exact match", 1.0), ("f1", "F1", 1.0)],
                    "context length (tokens)")

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return _report(metrics, errors)


def summary(metrics: dict[str, Any]) -> str:
    """The split, its questions, EM and F1 on one line."""
    line = (f"{metrics['split']} ({metrics['n']} questions): exact match {metrics['exact_match']:.4f}, "
            f"F1 {metrics['f1']:.4f}")
    if "has_ans_f1" in metrics:
        line += f" (HasAns F1 {metrics['has_ans_f1']:.4f}, NoAns F1 {metrics['no_ans_f1']:.4f})"
    return line


def worst(split: data.Questions, predicted: list[str], confidence: list[float], f1: list[float],
          limit: int) -> list[dict[str, Any]]:
    """The questions answered worst: lowest F1 first, then the most confident."""
    order = sorted((i for i in range(len(split)) if f1[i] < 1.0), key=lambda i: (f1[i], -confidence[i]))
    return [{"text": split.questions[i], "context": split.contexts[i], "gold": split.texts(i),
             "predicted": predicted[i], "confidence": round(float(confidence[i]), 6), "f1": round(f1[i], 4),
             "id": split.ids[i]} for i in order[:limit]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    rules = metrics["rules"]
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} questions); SQuAD exact match and "
             f"F1 (official normalisation), answers read as the transformers pipeline reads them (max_answer_len "
             f"{rules['max_answer_len']}, align_to_words {rules['align_to_words']}, windows of {rules['max_length']} "
             f"tokens sharing {rules['doc_stride']}; no answer: {rules['no_answer']}).", "",
             "| exact match | F1 |", "|---|---|", f"| {metrics['exact_match']:.4f} | {metrics['f1']:.4f} |"]
    if "has_ans_f1" in metrics:
        lines += ["", "## Answerable and unanswerable questions", "", "| part | n | exact match | F1 |",
                  "|---|---|---|---|"]
        for part, name in (("has_ans", "HasAns"), ("no_ans", "NoAns")):
            lines.append(f"| {name} | {metrics[part + '_n']} | {metrics[part + '_exact_match']:.4f} | "
                         f"{metrics[part + '_f1']:.4f} |")
        if "best_f1" in metrics:
            lines += ["", f"Best null threshold on this split: F1 {metrics['best_f1']:.4f} at "
                          f"{metrics['best_f1_threshold']:.4f} (no-answer score minus best answer score)."]
        if "tuned_f1" in metrics:
            lines.append(f"With the validation split's threshold {metrics['tuned_threshold']:.4f} (what export "
                         f"records and the service applies): exact match {metrics['tuned_exact_match']:.4f}, F1 "
                         f"{metrics['tuned_f1']:.4f}.")
    lines += ["", "## By context length", "", "| tokens | n | exact match | F1 |", "|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | {b['exact_match']:.4f} | {b['f1']:.4f} |")
    lines += slice_table(metrics, HEADLINE)
    lines += ["", "![length](length.png)", "", f"## Worst questions ({len(errors)} in errors.jsonl)", "",
              "| question | gold | predicted | F1 |", "|---|---|---|---|"]
    for e in errors[:10]:
        gold = ", ".join(repr(g) for g in e["gold"]) or "(no answer)"
        lines.append(f"| {_cell(e['text'])[:80]} | {_cell(gold)} | {_cell(repr(e['predicted']) if e['predicted'] else '(no answer)')} "
                     f"| {e['f1']:.2f} |")
    return "\n".join(lines) + "\n"

"""What a classifier's logits mean, in one place: scores (softmax, sigmoid or the logit itself) and
decisions (the top label, every label over its threshold, or the score of a relevance/similarity
head), for the runtime, the service, parity and the INT8 choice.

Numpy and the head only: the torch-free serving side uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from deploykit.tasks.classification.head import Classification


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities of logits [n, k] (computed in float64 for stability)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function (float64; the tanh form never overflows)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def order_agreement(reference: np.ndarray, scores: np.ndarray, tolerance: float, chunk: int = 1024) -> float:
    """The share of row pairs (i, j) with ``reference[i] - reference[j] > tolerance`` for which
    ``scores[i] > scores[j]`` too (1.0 when no pair differs by more than ``tolerance``): a ranking
    kept "except between scores closer than the tolerance". Compared in chunks of rows, so memory
    stays ``chunk`` x rows."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    compared = kept = 0
    for start in range(0, len(a), chunk):
        apart = (a[start:start + chunk, None] - a[None, :]) > tolerance
        compared += int(apart.sum())
        kept += int((apart & ((b[start:start + chunk, None] - b[None, :]) > 0)).sum())
    return 1.0 if compared == 0 else kept / compared


@dataclass(frozen=True)
class Decisions:
    """The rule of one head: how logits become scores and labels.

    Args:
        labels: The label names in the logits' column order.
        thresholds: Multi-label: each label's probability threshold; None otherwise.
        activation: ``softmax`` (the top label), ``sigmoid`` (multi-label with ``thresholds``, or a
            relevance score) or ``identity`` (a similarity).
    """

    labels: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None
    activation: str = "softmax"

    @classmethod
    def of(cls, head: Any, labels: Sequence[str]) -> "Decisions":
        """The rule of a manifest's head: a ``Classification``'s own; another task's head on this
        runtime (token classification), or none (a graph without a manifest), is scored by softmax."""
        if isinstance(head, Classification):
            return cls(tuple(labels), head.thresholds, head.activation)
        return cls(tuple(labels))

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @property
    def score_head(self) -> bool:
        """One number per row (relevance or similarity), not labels."""
        return not self.multi_label and self.activation != "softmax"

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Each label's probability (softmax over the labels, or each label's own sigmoid), or a
        score head's score (sigmoid of its logit, or the logit)."""
        if self.activation == "identity":
            return np.asarray(logits, dtype=np.float64)
        return sigmoid(logits) if self.activation == "sigmoid" else softmax(logits)

    def predicted(self, logits: np.ndarray) -> np.ndarray:
        """The decisions: label ids [n] (single-label), a bool matrix [n, k] (multi-label), or the
        scores [n] (a score head)."""
        if self.multi_label:
            return self.scores(logits) >= np.asarray(self.thresholds)
        if self.score_head:
            return self.scores(logits)[:, 0]
        return np.asarray(logits).argmax(axis=-1)

    def agreement(self, reference: np.ndarray, logits: np.ndarray, tolerance: float | None = None) -> float:
        """How far two sets of logits decide alike: the share of rows' top labels, or of (row, label)
        decisions for multi-label (per-label agreement), that they share; for a score head the
        Spearman correlation of the scores (the ranking is what a reranker serves), or with a
        ``tolerance`` the share of the row pairs whose reference scores differ by more than it that
        keep their order (``order_agreement``: float graphs must keep every such order, while
        Spearman moves below 1 with any two near-tied rows that swap)."""
        if len(reference) == 0:
            return 1.0
        if self.score_head:
            a, b = self.predicted(reference), self.predicted(logits)
            if tolerance is not None:
                return order_agreement(a, b, tolerance)
            from scipy.stats import spearmanr  # parity and export only; serving never calls this

            return 1.0 if np.array_equal(a, b) else float(spearmanr(a, b).statistic)
        return float((self.predicted(reference) == self.predicted(logits)).mean())

    def changed_rows(self, reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Bool [n]: the rows whose decision differs (any label's, for multi-label; none for a score
        head, whose scores parity compares by value)."""
        if self.score_head:
            return np.zeros(len(reference), dtype=bool)
        diff = self.predicted(reference) != self.predicted(logits)
        return diff.any(axis=-1) if self.multi_label else diff

    def results(self, logits: np.ndarray, truncated: Sequence[bool]) -> list[dict[str, Any]]:
        """One answer per row: single-label ``{"label", "score", "scores", "truncated"}``; multi-label
        ``{"labels", "scores", "truncated"}`` (the labels at or over their thresholds, most probable
        first, and every label's probability); a score head ``{"score", "truncated"}``."""
        probs = self.scores(logits)
        out = []
        if self.score_head:
            return [{"score": float(probs[i, 0]), "truncated": bool(cut)} for i, cut in enumerate(truncated)]
        if self.multi_label:
            chosen = probs >= np.asarray(self.thresholds)
            for i, cut in enumerate(truncated):
                picked = sorted(np.flatnonzero(chosen[i]), key=lambda j: -probs[i, j])
                out.append({"labels": [self.labels[j] for j in picked],
                            "scores": {label: float(p) for label, p in zip(self.labels, probs[i])},
                            "truncated": bool(cut)})
            return out
        best = probs.argmax(axis=-1)
        for i, cut in enumerate(truncated):
            out.append({"label": self.labels[int(best[i])], "score": float(probs[i, best[i]]),
                        "scores": {label: float(p) for label, p in zip(self.labels, probs[i])},
                        "truncated": bool(cut)})
        return out

    def label_strings(self, logits: np.ndarray) -> list[str]:
        """Each row's decision as one string (the v2 ``LABEL``/``LABELS`` tensor): the top label, or
        the chosen labels as a JSON list (``[]`` for none), which no label name can make ambiguous; a
        score head has no labels (its v2 output is SCORES alone): an empty list."""
        import json

        if self.score_head:
            return []

        return [json.dumps(row["labels"], ensure_ascii=False) if self.multi_label else row["label"]
                for row in self.results(logits, [False] * len(logits))]

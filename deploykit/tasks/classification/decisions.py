"""What a classifier's logits mean, in one place: scores (softmax or sigmoid) and decisions (the top
label, or every label over its threshold), for the runtime, the service, parity and the INT8 choice.

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


@dataclass(frozen=True)
class Decisions:
    """The rule of one head: how logits become scores and labels.

    Args:
        labels: The label names in the logits' column order.
        thresholds: Multi-label: each label's probability threshold; None: single-label (softmax,
            the top label).
    """

    labels: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None

    @classmethod
    def of(cls, head: Any, labels: Sequence[str]) -> "Decisions":
        """The rule of a manifest's head: a ``Classification``'s own; another task's head on this
        runtime (token classification), or none (a graph without a manifest), is scored by softmax."""
        return cls(tuple(labels), head.thresholds if isinstance(head, Classification) else None)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Each label's probability: softmax over the labels, or each label's own sigmoid."""
        return sigmoid(logits) if self.multi_label else softmax(logits)

    def predicted(self, logits: np.ndarray) -> np.ndarray:
        """The decisions: label ids [n] (single-label) or a bool matrix [n, k] (multi-label)."""
        if self.multi_label:
            return self.scores(logits) >= np.asarray(self.thresholds)
        return np.asarray(logits).argmax(axis=-1)

    def agreement(self, reference: np.ndarray, logits: np.ndarray) -> float:
        """The share of decisions two sets of logits share: rows' top labels, or (row, label)
        decisions for multi-label (per-label agreement)."""
        if len(reference) == 0:
            return 1.0
        return float((self.predicted(reference) == self.predicted(logits)).mean())

    def changed_rows(self, reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Bool [n]: the rows whose decision differs (any label's, for multi-label)."""
        diff = self.predicted(reference) != self.predicted(logits)
        return diff.any(axis=-1) if self.multi_label else diff

    def results(self, logits: np.ndarray, truncated: Sequence[bool]) -> list[dict[str, Any]]:
        """One answer per row: single-label ``{"label", "score", "scores", "truncated"}``; multi-label
        ``{"labels", "scores", "truncated"}`` (the labels at or over their thresholds, most probable
        first, and every label's probability)."""
        probs = self.scores(logits)
        out = []
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
        the chosen labels as a JSON list (``[]`` for none), which no label name can make ambiguous."""
        import json

        return [json.dumps(row["labels"], ensure_ascii=False) if self.multi_label else row["label"]
                for row in self.results(logits, [False] * len(logits))]

"""The INT8 choice of token-classification: text-classification's measured ladder, with entities as the judge.

``int8_schemes.choose`` (static MinMax, then Entropy, then the accuracy-aware float fallback of
``int8_fallback.search``) is reused as it is; what it asks of its judge (``trial``, ``logits``,
``batch_independence``, ``record``, ``rows``, the bounds) is ``Scorer`` here, which scores a
candidate graph, run as served (this task's runtime: windows, the artifact's tokenizer), against
the float graph on validation sentences:

- ``agreement``: the share of sentences whose entity set (type, start, end; the default
  aggregation) is unchanged - the gate's own statistic;
- ``expected_agreement``: the share expected if every token's logit error were Gaussian with the
  spread of all tokens' errors (a sentence keeps its labels with the product of its tokens'
  keep probabilities) - a low-noise estimate, as the classifier's ladder uses per text;
- ``macro_f1_drop`` (the ladder's name): the entity-F1 loss against the float graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.tasks.classification.int8_fallback import Trial
from deploykit.tasks.token_classification import aggregation, parity, scoring
from deploykit.tasks.token_classification.runtime import Runtime


@dataclass
class SearchRows:
    """The sentences candidates are scored on, their gold entities and word spans, and their split."""

    texts: list[str]
    entities: list[list[tuple[str, int, int]]]
    words: list[list[tuple[int, int]]]
    split: str


def expected_sentence_agreement(reference: Sequence[np.ndarray], logits: Sequence[np.ndarray]) -> float:
    """Sentence-level agreement expected under Gaussian logit errors (see the module docstring).

    Args:
        reference: Each sentence's float logits [tokens, labels] (content tokens).
        logits: The candidate's, in the same shapes.
    """
    from scipy.special import ndtr  # the standard normal CDF; scipy comes with scikit-learn

    gaps, changes, sizes = [], [], []
    for ref, got in zip(reference, logits):
        ref = ref.astype(np.float64)
        rows = np.arange(len(ref))
        top = ref.argmax(axis=1)
        others = np.ones(ref.shape, dtype=bool)
        others[rows, top] = False
        gaps.append((ref[rows, top][:, None] - ref)[others].reshape(len(ref), -1))
        error = got.astype(np.float64) - ref
        changes.append((error[rows, top][:, None] - error)[others])
        sizes.append(len(ref))
    change = np.concatenate(changes) if changes else np.zeros(0)
    sigma = float(np.sqrt(np.mean(change ** 2))) if change.size else 0.0
    if sigma == 0.0:
        return float(np.mean([(g.argmax(-1) == r.argmax(-1)).all() for r, g in zip(reference, logits)]))
    return float(np.mean([np.prod(ndtr(gap / sigma)) for gap in gaps]))


class Scorer:
    """Scores candidate INT8 graphs on the search sentences, as served, against a float graph
    (the judge ``int8_schemes.choose`` and ``int8_fallback.search`` call).

    Args:
        reference: The float graph candidates are compared with.
        tokenizer_file: The artifact's ``tokenizer.json``.
        rows: Search sentences (the validation split).
        max_length: Window length.
        stride: Window overlap.
        batch_sizes: Batch sizes the scoring cycles through.
        labels: The labels in id order.
        strategy: The aggregation the sentences' entities are read with (the served default).
        min_agreement: The INT8 gate (sentence span agreement).
        max_f1_drop: Largest entity-F1 loss against ``reference``.
        margin: What the expected agreement must add to ``min_agreement``.
    """

    def __init__(self, reference: Path, tokenizer_file: Path, rows: SearchRows, max_length: int, stride: int,
                 batch_sizes: Sequence[int], labels: Sequence[str], strategy: str, min_agreement: float,
                 max_f1_drop: float, margin: float = 0.0) -> None:
        self.reference_path, self.tokenizer_file, self.rows = Path(reference), Path(tokenizer_file), rows
        self.max_length, self.stride, self.batch_sizes = max_length, stride, list(batch_sizes)
        self.labels, self.strategy = list(labels), strategy
        self.min_agreement, self.max_f1_drop = min_agreement, max_f1_drop
        self.target = min(1.0, min_agreement + margin)
        self.count_floor = min_agreement  # the counted agreement must reach the gate itself
        self.reference_tokens, self.reference_found = self._score(self.reference_path, "int8 search: float reference")
        self.reference_f1 = self._f1(self.reference_found)

    def runtime(self, path: Path) -> Runtime:
        """The candidate loaded as served: the runtime's own windows, padding and feeds."""
        return Runtime.of_graph(path, self.tokenizer_file, self.max_length, stride=self.stride)

    def _score(self, path: Path, desc: str = "") -> tuple[list[np.ndarray], list[list[dict[str, Any]]]]:
        """(each sentence's content-token logits, its entities) of the search rows."""
        runtime = self.runtime(path)
        rows, logits = parity.runtime_logits(runtime, self.rows.texts, self.batch_sizes, desc=desc, progress=bool(desc))
        found = runtime.entities(self.rows.texts, rows, logits, self.strategy)
        per_text: list[list[np.ndarray]] = [[] for _ in self.rows.texts]
        for row, lg in zip(rows, logits):
            per_text[row.text].append(lg[np.asarray(row.special) == 0])
        return [np.concatenate(parts) for parts in per_text], found

    def _f1(self, found: list[list[dict[str, Any]]]) -> float:
        return scoring.entity_metrics(self.rows.words, self.rows.entities, [aggregation.spans(f) for f in found])["entity_f1"]

    def logits(self, path: Path, texts: Sequence[str], sizes: Sequence[int], desc: str = "") -> np.ndarray:
        """All windows' logits of ``texts`` as one [tokens, labels] array (the fallback's damage measure)."""
        _, logits = parity.runtime_logits(self.runtime(path), texts, sizes, desc=desc, progress=bool(desc))
        return np.concatenate(list(logits))

    def trial(self, path: Path, float_nodes: int, desc: str = "") -> Trial:
        """Score one candidate on every search sentence."""
        tokens, found = self._score(path, desc or f"int8 search: {float_nodes} float")
        agreement, _ = parity.compare(found, self.reference_found)
        expected = expected_sentence_agreement(self.reference_tokens, tokens)
        drop = self.reference_f1 - self._f1(found)
        return Trial(float_nodes, agreement, expected, float(drop),
                     expected >= self.target and agreement >= self.count_floor and drop <= self.max_f1_drop)

    def batch_independence(self, path: Path, rows: int | None = None) -> dict[str, Any]:
        """The first ``rows`` search sentences' windows alone vs in mixed batches."""
        return parity.batch_independence(self.runtime(path), self.rows.texts[:rows])

    def record(self) -> dict[str, Any]:
        """The rows and bounds, for the manifest (``macro_f1`` bounds are entity-F1 here)."""
        return {"split": self.rows.split, "rows": len(self.rows.texts), "min_agreement": self.min_agreement,
                "agreement": "sentences with the same entities", "aggregation": self.strategy,
                "min_expected_agreement": self.target, "min_counted_agreement": self.count_floor,
                "max_macro_f1_drop": self.max_f1_drop, "f1": "entity_f1", "reference": self.reference_path.name}


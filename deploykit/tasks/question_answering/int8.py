"""The INT8 choice of question-answering: text-classification's measured ladder, with answers as the judge.

``int8_schemes.choose`` (static MinMax, then Entropy, then the accuracy-aware float fallback of
``int8_fallback.search``) is reused as it is; what it asks of its judge (``trial``, ``logits``,
``batch_independence``, ``record``, ``rows``, the bounds) is ``Scorer`` here, which scores a candidate
graph, run as served (this task's runtime: pair windows, the artifact's tokenizer), against the float
graph on validation questions:

- ``agreement``: the share of questions whose best answer (text, start, end) is unchanged;
- ``expected_agreement``: the share expected if every logit's error were Gaussian with the spread of all
  errors: a question keeps its answer when its best start and best end tokens stay on top
  (``token_classification.int8.expected_sentence_agreement`` over its [start, end] x tokens logits);
- ``macro_f1_drop`` (the ladder's name): the SQuAD-F1 loss against the float graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.tasks.classification.int8_fallback import Trial
from deploykit.tasks.question_answering import data, parity, squad
from deploykit.tasks.question_answering.head import QuestionAnswering
from deploykit.tasks.question_answering.runtime import Runtime
from deploykit.tasks.token_classification.int8 import expected_sentence_agreement


@dataclass
class SearchRows:
    """The questions candidates are scored on and their split; ``texts`` are (question, context) pairs
    (what the ladder's fallback samples and ``Scorer.logits`` takes)."""

    questions: data.Questions
    split: str

    @property
    def texts(self) -> list[tuple[str, str]]:
        return list(zip(self.questions.questions, self.questions.contexts))


class PairFeeds:
    """A runtime seen as the calibration reader expects (``tokenize(texts)``, ``feeds(rows)``), for
    (question, context) pairs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        return self.runtime.tokenize([q for q, _ in pairs], [c for _, c in pairs])

    def feeds(self, rows: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.runtime.feeds(rows)


class Scorer:
    """Scores candidate INT8 graphs on the search questions, as served, against a float graph.

    Args:
        reference: The float graph candidates are compared with.
        tokenizer_file: The artifact's ``tokenizer.json``.
        rows: Search questions (the validation split).
        max_length: Window length.
        head: The export's head (its stride, answer rules and question limit: candidates answer as served).
        batch_sizes: Batch sizes the scoring cycles through.
        min_agreement: The INT8 gate (best-answer agreement).
        max_f1_drop: Largest SQuAD-F1 loss against ``reference``.
        margin: What the expected agreement must add to ``min_agreement``.
    """

    def __init__(self, reference: Path, tokenizer_file: Path, rows: SearchRows, max_length: int, head: QuestionAnswering,
                 batch_sizes: Sequence[int], min_agreement: float, max_f1_drop: float, margin: float = 0.0) -> None:
        self.reference_path, self.tokenizer_file, self.rows = Path(reference), Path(tokenizer_file), rows
        self.max_length, self.head, self.batch_sizes = max_length, head, list(batch_sizes)
        self.min_agreement, self.max_f1_drop = min_agreement, max_f1_drop
        self.target = min(1.0, min_agreement + margin)
        self.count_floor = min_agreement
        self.reference_logits, self.reference_found = self._score(self.reference_path, "int8 search: float reference")
        self.reference_f1 = self._f1(self.reference_found)

    def runtime(self, path: Path) -> Runtime:
        """The candidate loaded as served: the runtime's own windows, padding and feeds."""
        return Runtime.of_graph(path, self.tokenizer_file, self.max_length, head=self.head)

    def _score(self, path: Path, desc: str = "") -> tuple[list[np.ndarray], list[list[dict[str, Any]]]]:
        """(each question's [2, tokens] logits over its windows, its best answer) of the search rows."""
        runtime = self.runtime(path)
        q = self.rows.questions
        rows, logits = parity.runtime_logits(runtime, q, self.batch_sizes, desc=desc, progress=bool(desc))
        found = runtime.answers(q.contexts, rows, logits, 1, threshold=False)
        per_question: list[list[np.ndarray]] = [[] for _ in range(len(q))]
        for row, lg in zip(rows, logits):
            per_question[row.text].append(lg)
        return [np.concatenate(parts, axis=1) for parts in per_question], found

    def _f1(self, found: list[list[dict[str, Any]]]) -> float:
        q = self.rows.questions
        return squad.metrics([q.texts(i) for i in range(len(q))], [f[0]["answer"] if f else "" for f in found])["f1"]

    def logits(self, path: Path, texts: Sequence[tuple[str, str]], sizes: Sequence[int], desc: str = "") -> np.ndarray:
        """All windows' logits of (question, context) pairs as one [tokens, 2] array (the fallback's damage measure)."""
        q = data.Questions([t[0] for t in texts], [t[1] for t in texts], [[] for _ in texts])
        _, logits = parity.runtime_logits(self.runtime(path), q, sizes, desc=desc, progress=bool(desc))
        return np.concatenate([lg.T for lg in logits])

    def trial(self, path: Path, float_nodes: int, desc: str = "") -> Trial:
        """Score one candidate on every search question."""
        tokens, found = self._score(path, desc or f"int8 search: {float_nodes} float")
        agreement = parity.compare(found, self.reference_found)["best_agreement"]
        expected = expected_sentence_agreement(self.reference_logits, tokens)
        drop = self.reference_f1 - self._f1(found)
        return Trial(float_nodes, agreement, expected, float(drop),
                     expected >= self.target and agreement >= self.count_floor and drop <= self.max_f1_drop)

    def batch_independence(self, path: Path, rows: int | None = None) -> dict[str, Any]:
        """The first ``rows`` search questions' windows alone vs in mixed batches."""
        return parity.batch_independence(self.runtime(path), self.rows.questions.take(rows))

    def record(self) -> dict[str, Any]:
        """The rows and bounds, for the manifest (``macro_f1`` bounds are SQuAD F1 here)."""
        return {"split": self.rows.split, "rows": len(self.rows.questions), "min_agreement": self.min_agreement,
                "agreement": "questions with the same best answer", "min_expected_agreement": self.target,
                "min_counted_agreement": self.count_floor, "max_macro_f1_drop": self.max_f1_drop, "f1": "squad_f1",
                "reference": self.reference_path.name}

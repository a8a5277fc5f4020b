"""The manifest head of a text-classification artifact: label names, the logits output and what
the logits mean (the problem type: one label by softmax, or any number by per-label sigmoid and
thresholds).

Standard library only (plus the manifest's typed reader): the torch-free serving side reads it.
This is the one reader of the head's fields: the runtime, parity, serving, predict and Triton all
take ``problem_type``, ``activation`` and ``thresholds`` from the ``Classification`` it returns.

A multi-label head is written with ``schema_version`` 2 (``SCHEMA_VERSION``): a deploykit of
schema 1 reads only ``labels`` and ``output`` and would serve the logits with softmax, so it must
refuse such an artifact, and it does (it reads version 1 only). Single-label artifacts stay
version 1, readable by every deploykit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deploykit.errors import BadInputError
from deploykit.manifest import CONFIG, Fields


@dataclass(frozen=True)
class Classification:
    """The fields of a ``text-classification`` artifact: label names in the model's id order
    (the logits' columns) and the name of the logits output."""

    TASK: ClassVar[str] = "text-classification"
    # transformers' names of the problem types (config.json's problem_type).
    SINGLE: ClassVar[str] = "single_label_classification"
    MULTI: ClassVar[str] = "multi_label_classification"
    # One logit: a relevance score in [0, 1] (sigmoid, a reranker) or a similarity (identity).
    RELEVANCE: ClassVar[str] = "relevance"
    REGRESSION: ClassVar[str] = "regression"
    PROBLEM_TYPES: ClassVar[tuple[str, ...]] = (SINGLE, MULTI, RELEVANCE, REGRESSION)
    SCORES: ClassVar[tuple[str, ...]] = (RELEVANCE, REGRESSION)
    ACTIVATIONS: ClassVar[dict[str, str]] = {SINGLE: "softmax", MULTI: "sigmoid", RELEVANCE: "sigmoid",
                                             REGRESSION: "identity"}
    TRUNCATIONS: ClassVar[tuple[str, ...]] = ("longest_first", "only_second")
    # The manifest schema a head needs: a new problem type (or pairs) must be refused by older readers.
    SCHEMA_VERSIONS: ClassVar[dict[str, int]] = {SINGLE: 1, MULTI: 2, RELEVANCE: 2, REGRESSION: 2}
    # The encoder inputs the runtime knows how to build (tokens, mask, segment ids).
    INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")

    labels: tuple[str, ...]
    output: str = "logits"
    # Keyword-only, so that a head built on this one keeps its positional fields (tests/lengthtask).
    problem_type: str = field(default=SINGLE, kw_only=True)
    # Multi-label: each label's probability threshold (in label order); None for single-label.
    thresholds: tuple[float, ...] | None = field(default=None, kw_only=True)
    # Pairs: each row is two texts encoded together, cut by ``truncation``; None for single texts.
    truncation: str | None = field(default=None, kw_only=True)

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> "Classification":
        labels = fields.strings("labels", unique=True)
        output = fields.get("output", str)
        unknown = [name for name in inputs if name not in cls.INPUTS]
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            fields.fail("inputs", f"is {list(inputs)}; a {cls.TASK} graph takes input_ids and "
                                  f"attention_mask, optionally token_type_ids")
        problem = fields.get("problem_type", str, required=False, default=cls.SINGLE)
        if problem not in cls.PROBLEM_TYPES:
            fields.fail("problem_type", f"is {problem!r}; this deploykit serves {', '.join(cls.PROBLEM_TYPES)}")
        version = fields.get("schema_version", int)
        if version < cls.SCHEMA_VERSIONS[problem]:
            fields.fail("schema_version", f"is {version}, but a {problem} head needs schema_version "
                                          f"{cls.SCHEMA_VERSIONS[problem]} (older readers would apply softmax)")
        thresholds = None
        if problem == cls.MULTI:
            values = fields.get("thresholds", list)
            if len(values) != len(labels) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in values):
                fields.fail("thresholds", f"must list one probability in (0, 1) per label ({len(labels)})")
            thresholds = tuple(float(v) for v in values)
        elif "thresholds" in fields.doc:
            fields.fail("thresholds", f"belongs to a {cls.MULTI} head, not a {problem} one")
        if problem in cls.SCORES and len(labels) != 1:
            fields.fail("labels", f"lists {len(labels)} outputs; a {problem} head has one")
        truncation = None
        if fields.get("text_pair", bool, required=False, default=False):
            if version < 2:
                fields.fail("schema_version", f"is {version}, but a text-pair head needs schema_version 2")
            truncation = fields.get("truncation", str)
            if truncation not in cls.TRUNCATIONS:
                fields.fail("truncation", f"is {truncation!r}; choose one of {', '.join(cls.TRUNCATIONS)}")
        elif problem in cls.SCORES:
            fields.fail("text_pair", f"must be true: a {problem} head scores pairs of texts")
        return cls(labels, output, problem_type=problem, thresholds=thresholds, truncation=truncation)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"labels": list(self.labels), "output": self.output}
        if self.problem_type != self.SINGLE:  # single-label manifests keep the version-1 shape
            doc["problem_type"] = self.problem_type
        if self.multi_label:
            doc["thresholds"] = list(self.thresholds or ())
        if self.text_pair:
            doc.update(text_pair=True, truncation=self.truncation)
        return doc

    @property
    def text_pair(self) -> bool:
        """Each row is a pair of texts (query and document, two sentences), encoded together."""
        return self.truncation is not None

    @property
    def score_head(self) -> bool:
        """One logit per row read as a number (relevance or similarity), not as labels."""
        return self.problem_type in self.SCORES

    @property
    def multi_label(self) -> bool:
        """Any number of labels per text (per-label sigmoid and thresholds), not one (softmax)."""
        return self.problem_type == self.MULTI

    @property
    def activation(self) -> str:
        """What turns the logits into scores: ``softmax``, ``sigmoid`` or ``identity``."""
        return self.ACTIVATIONS[self.problem_type]

    @property
    def schema_version(self) -> int:
        """The manifest schema this head is written with (and that readers must understand)."""
        return max(self.SCHEMA_VERSIONS[self.problem_type], 2 if self.text_pair else 1)

    def check_config(self, config: Any, where: Path, max_length: int) -> None:
        """Cross-check the manifest against the checkpoint's ``config.json`` copied into the
        artifact (a hashed file, so it says what the model was trained with).

        Args:
            config: The parsed ``config.json``.
            where: The manifest's path (for messages).
            max_length: The manifest's ``max_length``.

        Raises:
            BadInputError: If ``id2label`` names other labels or another order, or ``max_length``
                is more than the model's ``max_position_embeddings``.
        """
        if not isinstance(config, dict):
            raise BadInputError(f"{where}: {CONFIG} is not a JSON object; re-export the artifact")
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and max_length > positions:
            raise BadInputError(f"{where}: 'max_length' {max_length} is more than the model's "
                                f"{positions} positions ({CONFIG} max_position_embeddings); re-export "
                                "the artifact with a smaller --max-length")
        id2label = config.get("id2label") or {}
        if not isinstance(id2label, dict):
            id2label = {}
        try:
            labels = [id2label[str(i)] for i in range(len(id2label))]
        except KeyError:
            labels = None
        if labels != list(self.labels):
            raise BadInputError(f"{where}: 'labels' {list(self.labels)} differ from {CONFIG}'s "
                                f"id2label {id2label}; re-export the artifact with 'deploykit export'")
        trained = config.get("problem_type") or self.SINGLE
        regression = self.problem_type == self.REGRESSION
        if (trained == self.MULTI) != self.multi_label or (trained == "regression") != regression:
            raise BadInputError(f"{where}: 'problem_type' {self.problem_type} differs from {CONFIG}'s "
                                f"problem_type {trained}; re-export the artifact with 'deploykit export'")


Head = Classification

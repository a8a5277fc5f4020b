"""The manifest head of a text-classification artifact: label names and the logits output.

Standard library only (plus the manifest's typed reader): the torch-free serving side reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deploykit.errors import BadInputError
from deploykit.manifest import CONFIG, Fields


@dataclass(frozen=True)
class Classification:
    """The fields of a ``text-classification`` artifact: label names in the model's id order
    (the logits' columns) and the name of the logits output."""

    TASK: ClassVar[str] = "text-classification"
    # The encoder inputs the runtime knows how to build (tokens, mask, segment ids).
    INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")

    labels: tuple[str, ...]
    output: str = "logits"

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> "Classification":
        labels = fields.strings("labels", unique=True)
        output = fields.get("output", str)
        unknown = [name for name in inputs if name not in cls.INPUTS]
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            fields.fail("inputs", f"is {list(inputs)}; a {cls.TASK} graph takes input_ids and "
                                  f"attention_mask, optionally token_type_ids")
        return cls(labels, output)

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "output": self.output}

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


Head = Classification

"""The manifest head of a token-classification artifact: the tag labels, the logits output, and how
entities are served (the training data's tag scheme, the default aggregation, the window stride).

Standard library only (plus the manifest's typed reader and the classifier's config check): the
torch-free serving side reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deploykit.manifest import Fields
from deploykit.tasks.classification.head import Classification

# transformers' token-classification pipeline's aggregation strategies, which the runtime applies
# the same way (``none``: one result per token, the pipeline's per-token fields).
AGGREGATIONS = ("none", "simple", "first", "average", "max")
TAG_SCHEMES = ("iob1", "iob2", "bioes")
OUTSIDE = "O"


def entity_type(label: str) -> str:
    """The entity type of an IOB2 label (``B-PER`` -> ``PER``; ``O`` -> ``O``)."""
    return label.split("-", 1)[-1]


@dataclass(frozen=True)
class TokenClassification:
    """The fields of a ``token-classification`` artifact.

    Attributes:
        labels: IOB2 labels in the model's id order (the logits' last axis): ``O``, ``B-TYPE``,
            ``I-TYPE``.
        output: The logits output ([batch, tokens, labels]).
        tag_scheme: The scheme of the training data's tags (converted to IOB2 before training).
        aggregation: The aggregation served when a request names none.
        stride: Tokens that consecutive windows of a long text share.
    """

    TASK: ClassVar[str] = "token-classification"
    INPUTS: ClassVar[tuple[str, ...]] = Classification.INPUTS

    labels: tuple[str, ...]
    output: str = "logits"
    tag_scheme: str = "iob2"
    aggregation: str = "first"
    stride: int = 32

    @property
    def entity_types(self) -> tuple[str, ...]:
        """The entity types the labels name, sorted."""
        return tuple(sorted({entity_type(label) for label in self.labels if label != OUTSIDE}))

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> TokenClassification:
        base = Classification.from_json(fields, inputs)  # labels, output and the encoder inputs
        bad = [label for label in base.labels
               if label != OUTSIDE and not (label[:2] in ("B-", "I-") and len(label) > 2)]
        if bad or OUTSIDE not in base.labels:
            fields.fail("labels", f"must be IOB2 labels ({OUTSIDE}, B-TYPE, I-TYPE) including {OUTSIDE}; "
                                  f"{bad or 'no ' + OUTSIDE} is not")
        scheme = fields.get("tag_scheme", str)
        if scheme not in TAG_SCHEMES:
            fields.fail("tag_scheme", f"is {scheme!r}; choose one of {', '.join(TAG_SCHEMES)}")
        aggregation = fields.get("aggregation", str)
        if aggregation not in AGGREGATIONS:
            fields.fail("aggregation", f"is {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        stride = fields.integer("stride", 0)
        max_length = fields.get("max_length", int)
        if stride >= max_length - 2:
            fields.fail("stride", f"is {stride}; it must leave a window of max_length {max_length} new tokens")
        return cls(base.labels, base.output, scheme, aggregation, stride)

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "output": self.output, "tag_scheme": self.tag_scheme,
                "aggregation": self.aggregation, "stride": self.stride}

    def check_config(self, config: Any, where: Path, max_length: int) -> None:
        """The classifier's cross-check of ``labels`` and ``max_length`` against ``config.json``
        (``id2label`` in id order, ``max_position_embeddings``).

        Raises:
            BadInputError: They disagree.
        """
        Classification(self.labels, self.output).check_config(config, where, max_length)


Head = TokenClassification

"""The manifest head of a text-length artifact: a classifier's labels and logits output, plus the
word-count edges of its buckets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from deploykit.manifest import Fields
from deploykit.tasks.classification.head import Classification


@dataclass(frozen=True)
class LengthBuckets(Classification):
    """A classifier whose labels are word-count buckets: ``edges`` are the bucket boundaries."""

    TASK: ClassVar[str] = "text-length"

    edges: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> "LengthBuckets":
        base = Classification.from_json(fields, inputs)
        edges = fields.get("edges", list)
        if not edges or not all(isinstance(e, int) and e > 0 for e in edges) or sorted(set(edges)) != edges:
            fields.fail("edges", "must be increasing positive word counts")
        if len(edges) + 1 != len(base.labels):
            fields.fail("edges", f"has {len(edges)} edges for {len(base.labels)} buckets; it needs one fewer")
        return cls(base.labels, base.output, tuple(edges))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "edges": list(self.edges)}


Head = LengthBuckets

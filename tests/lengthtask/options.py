"""The one option text-length adds: where its buckets' edges are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.options import int_list, opt, require, require_int_list


@dataclass
class Data:
    length_edges: str = opt("4,8", "text-length: word counts at which a text moves to the next bucket "
                            "(comma-separated, increasing).")

    def validate(self) -> None:
        require_int_list(self.length_edges, "length_edges")
        edges = int_list(self.length_edges)
        require(edges == sorted(set(edges)), "length_edges", f"{self.length_edges!r} is not increasing")


OPTIONS = {"DataConfig": Data}


def check(cfg: Any, stage: str) -> None:
    """No rule beyond the options' own checks."""

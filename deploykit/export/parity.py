"""Step 4's shared parts: one parity result type for every task, the batches parity cycles through,
and the table that reports it.

In the style of optimum's export validation: each task's ``export.Export.check`` compares one
variant, run by the task's serving runtime, with the PyTorch reference (the graph's interface
against the manifest, then shapes, then values), collects every missed bound in one
``ParityResult``, and the pipeline (``deploykit.export.pipeline``) judges the variants by it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class ParityResult:
    """Parity numbers, held-out metrics and bound failures of one variant, for every task.

    ``numbers`` are the task's measurements in the order the manifest records them (a
    classifier's ``max_abs_diff``, ``label_agreement``, ...; a decoder's ``token_agreement``, ...);
    ``batch_independence`` is how far a row's output moves with its batch mates (the record
    ``Variant.batch_independent`` reads).
    """

    name: str
    precision: str
    numbers: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    batch_independence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, check: str, value: Any, limit: Any, missed_by: float | None = None) -> None:
        """Record a missed bound (``missed_by``: how far past the limit, when it is a number)."""
        self.failures.append({"check": check, "value": value, "limit": limit, "missed_by": missed_by})

    def parity(self) -> dict[str, Any]:
        """The manifest's ``parity`` entry."""
        record = {**self.numbers, "passed": self.passed, "bounds": self.bounds, "failures": self.failures}
        if self.batch_independence:
            record["batch_independence"] = self.batch_independence
        return record


@dataclass(frozen=True)
class Column:
    """One column of the parity table: its header, a variant's cell, and the PyTorch row's cell."""

    header: str
    cell: Callable[[ParityResult], str]
    reference: str = "-"


def batches(n: int, sizes: Sequence[int]) -> list[slice]:
    """Consecutive row slices whose sizes cycle through ``sizes`` (the last one may be short)."""
    result, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= n:
            return result
        result.append(slice(start, min(start + size, n)))
        start += size


def verdict(result: ParityResult) -> str:
    """``pass``, or each missed bound with its value, limit and by how much."""
    if result.passed:
        return "pass"
    return "; ".join(f"FAIL {f['check']} {fmt(f['value'])} vs {fmt(f['limit'])}"
                     + (f" (missed by {fmt(f['missed_by'])})" if f.get("missed_by") is not None else "")
                     for f in result.failures)


def table(results: Sequence[ParityResult], columns: Sequence[Column]) -> str:
    """A plain-text table: the PyTorch reference, then one row per variant with its numbers and
    which bound it missed by how much."""
    rows = [("variant", *(c.header for c in columns), "result"),
            ("pytorch", *(c.reference for c in columns), "reference")]
    rows += [(r.name, *(c.cell(r) for c in columns), verdict(r)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)


def fmt(value: Any) -> str:
    """A number as the tables show it (small ones in scientific notation), ``-`` for None."""
    if isinstance(value, float):
        return f"{value:.3g}" if (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return "-" if value is None else str(value)

"""Shared builders for the export tests: a small held-out CSV and exported artifacts per arch."""

from __future__ import annotations

from pathlib import Path

from factories import learnable_rows, write_csv

# Parity rows: the learnable keyword rows plus one very short and one over-long row (truncated
# at max_length), so the held-out set mixes padded and full rows of many lengths.
LONG_TEXT = " ".join(["the weather today was awful and the road was long"] * 30)


def heldout_csv(path: Path, n: int = 30) -> Path:
    rows = learnable_rows(n, seed=1) + [("ok", "neutral"), (LONG_TEXT, "negative")]
    return write_csv(path, rows)


def export_artifact(root: Path, arch: str, data: Path, **options) -> tuple[Path, Path]:
    """make_checkpoint + deploykit.export.run on the CSV's rows; returns (checkpoint, artifact)."""
    from factories import make_checkpoint

    from deploykit import export
    from deploykit.config import ExportConfig

    checkpoint = make_checkpoint(root / f"{arch}-checkpoint", arch)
    # Tiny random models have near-tied logits, so INT8 may flip labels: the INT8 gate's
    # mechanics and the fallback search (which would keep most of such a graph in float) are
    # tested separately, and fp32/opt parity is asserted per test. --quantize static writes the
    # INT8 graph even when no scheme meets the target bounds (auto would then write none).
    options = {"int8_fallback": "off", "quantize": "static", **options}
    cfg = ExportConfig(checkpoint=str(checkpoint), out=str(root / f"{arch}-artifact"), data=str(data),
                       split="all", allow_parity_failure=True, **options)
    return checkpoint, export.run(cfg)

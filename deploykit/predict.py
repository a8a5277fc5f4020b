"""``deploykit predict``: torch-free batch scoring of a file with an artifact.

Reads CSV, JSON (a list of objects), JSONL or Parquet in chunks (the standard library for the
text formats, pyarrow for Parquet when it is installed), scores each chunk with the runtime
(token-budget batches, length-sorted) and writes one JSON line per input row, in input order,
to a temporary file that is renamed into place only when every row is scored.

Deliberately not ``deploykit.data``: that module reads through pandas/datasets (the ``train``
extra), and this command must run on the base install.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from deploykit.config import PredictConfig
from deploykit.errors import BadInputError
from deploykit.runtime import Runtime

log = logging.getLogger(__name__)

FORMATS = (".csv", ".json", ".jsonl", ".parquet")


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise BadInputError(f"line {number} of {path} is not valid JSON ({exc}); fix the line "
                                    "or convert the file") from None


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); for one object per line name the "
                            "file .jsonl") from None
    if not isinstance(rows, list):
        raise BadInputError(f"{path} must hold a JSON list of objects (or use JSONL, one per line)")
    yield from rows


def _parquet_rows(path: Path, column: str) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError(f"reading {path} needs pyarrow, which is not installed; "
                            "'pip install pyarrow' or convert the file to CSV/JSONL") from None
    parquet = pq.ParquetFile(path)
    if column not in parquet.schema_arrow.names:
        raise BadInputError(f"{path} has no column {column!r} (columns: "
                            f"{', '.join(parquet.schema_arrow.names)}); pass --text-column")
    for batch in parquet.iter_batches(columns=[column]):
        yield from batch.to_pylist()


def read_texts(path: str | Path, column: str) -> Iterator[str]:
    """Stream the text column of a data file, row by row.

    Args:
        path: A ``.csv``, ``.json``, ``.jsonl`` or ``.parquet`` file.
        column: The column holding the text.

    Yields:
        Each row's text (non-string values as ``str``).

    Raises:
        BadInputError: Missing file, unknown format, missing column or a row without text.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"data file {path} does not exist; pass an existing file to --data")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadInputError(f"cannot read {path}: use one of {', '.join(FORMATS)}")
    rows = {".csv": lambda: _csv_rows(path), ".jsonl": lambda: _jsonl_rows(path),
            ".json": lambda: _json_rows(path), ".parquet": lambda: _parquet_rows(path, column)}[suffix]()
    for number, row in enumerate(rows, 1):
        value = row.get(column) if isinstance(row, dict) else None
        if value is None:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise BadInputError(f"row {number} of {path} has no {column!r} value (it has: {keys}); "
                                "pass the right --text-column or fix the row")
        yield value if isinstance(value, str) else str(value)


def _count_rows(path: Path) -> int | None:
    """Rows in the file, for the progress bar (cheap formats only)."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        except ImportError:
            return None
    if path.suffix.lower() == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def run(cfg: PredictConfig) -> Path:
    """Score every row of ``cfg.data`` and write ``cfg.out`` (JSONL, input order).

    Each line is ``{"row": i, "label", "score", "scores": {label: p}, "truncated"}``.

    Args:
        cfg: The predict configuration.

    Returns:
        The predictions file.

    Raises:
        BadInputError: Bad artifact, data file or column.
        IntegrityError: An artifact file does not match its manifest.
    """
    from tqdm import tqdm

    # One caller calling back to back: idle threads may spin (see Runtime's ``spin``).
    runtime = Runtime(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_tokens=cfg.max_batch_tokens,
                      max_batch_size=cfg.max_batch_size, spin=True)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = read_texts(cfg.data, cfg.text_column)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh, \
                tqdm(total=_count_rows(Path(cfg.data)), unit="row", desc="predict") as bar:
            while chunk := list(islice(texts, cfg.chunk_size)):
                for result in runtime.predict(chunk):
                    fh.write(json.dumps({"row": n, **result}) + "\n")
                    n += 1
                bar.update(len(chunk))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d predictions (%s, variant %s) to %s", n, runtime.name, runtime.variant, out)
    return out

"""``deploykit predict``: torch-free batch scoring of a file with an artifact, written once.

Reads CSV, JSON (a list of objects), JSONL or Parquet in chunks (the standard library for the
text formats, pyarrow for Parquet when it is installed), scores each chunk with the artifact's
task (its folder's ``predict.Scorer``: a classifier's runtime in token-budget batches, a
decoder's iteration-level scheduler) and writes one JSON line per input row, in input order,
to a temporary file that is renamed into place only when every row is scored.

Deliberately not ``deploykit.data``: that module reads through pandas/datasets (the ``train``
extra), and this command must run on the base install.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from deploykit import tasks
from deploykit.config import PredictConfig, check_task
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

FORMATS = (".csv", ".json", ".jsonl", ".parquet")


def _not_utf8(path: Path, where: str) -> BadInputError:
    return BadInputError(f"{where} of {path} is not UTF-8 text (a binary file, or another encoding such "
                         "as Latin-1); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _utf8_lines(path: Path, fh: Any) -> Iterator[str]:
    """The lines of a binary file as text, refusing the first one that is not UTF-8 by number
    (decoding line by line names the line; a text-mode file fails somewhere in an 8 KiB block)."""
    for number, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(path, f"line {number}") from None


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        reader = csv.DictReader(_utf8_lines(path, fh))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if "field larger than field limit" in str(exc):
                    raise BadInputError(f"row {reader.line_num} of {path} has a field over {csv.field_size_limit()} "
                                        "characters (the CSV reader's limit): usually a quote that is never "
                                        "closed; fix the quoting, or convert the file to JSONL") from None
                raise BadInputError(f"row {reader.line_num} of {path} is not valid CSV ({exc}); fix the row "
                                    "or convert the file to JSONL") from None
            yield row


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        for number, line in enumerate(_utf8_lines(path, fh), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise BadInputError(f"line {number} of {path} is not valid JSON ({exc}); fix the line "
                                    "or convert the file") from None


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _not_utf8(path, "the text") from None
    except (ValueError, RecursionError) as exc:
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


def read_texts(path: str | Path, column: str, to_text: Callable[[Any], str] | None = None,
               flag: str = "--text-column") -> Iterator[str]:
    """Stream the text column of a data file, row by row.

    Args:
        path: A ``.csv``, ``.json``, ``.jsonl`` or ``.parquet`` file.
        column: The column holding the text.
        to_text: How a cell becomes the text (a task's reader: a token classifier joins a word-level
            row's tokens); it raises ``ValueError`` saying what is wrong with the cell. Default:
            the cell itself (non-string values as ``str``).
        flag: The option that names ``column``, for the error messages.

    Yields:
        Each row's text (non-string values as ``str``).

    Raises:
        BadInputError: Missing file, unknown format, a file that is not UTF-8 or not valid
            CSV/JSON, no rows at all, a missing column, or a row without text, with blank text
            (the service's rule: it answers 400 to blank texts) or with text that is not Unicode.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"data file {path} does not exist; pass an existing file to --data")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadInputError(f"cannot read {path}: use one of {', '.join(FORMATS)}")
    rows = {".csv": lambda: _csv_rows(path), ".jsonl": lambda: _jsonl_rows(path),
            ".json": lambda: _json_rows(path), ".parquet": lambda: _parquet_rows(path, column)}[suffix]()
    number = 0
    for number, row in enumerate(rows, 1):
        value = row.get(column) if isinstance(row, dict) else None
        if value is None:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise BadInputError(f"row {number} of {path} has no {column!r} value (it has: {keys}); "
                                f"pass the right {flag} or fix the row")
        if to_text is None:
            text = value if isinstance(value, str) else str(value)
        else:
            try:
                text = to_text(value)
            except ValueError as exc:
                raise BadInputError(f"row {number} of {path}: column {column!r} {exc}; fix the row") from None
        if not text.strip():
            raise BadInputError(f"row {number} of {path} has a blank {column!r} (the service refuses blank "
                                "texts too); remove or fill the row")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInputError(f"row {number} of {path} holds a {column!r} that is not Unicode text (a lone "
                                "surrogate such as \\ud800); fix the row") from None
        yield text
    if number == 0:
        raise BadInputError(f"{path} holds no rows to score; pass a file with at least one row")


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


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` meanwhile, so the temporary file is removed (a
    plain SIGTERM kills Python without running any cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_rows(cfg: PredictConfig, score: Callable[[list[str], int], Iterable[dict[str, Any]]]) -> tuple[Path, int]:
    """Read ``cfg.data``'s column in chunks, ``score(chunk, first_row)`` each, and write one JSON
    line per row (``{"row": i, **result}``) to a temporary file renamed to ``cfg.out`` at the end.

    Returns:
        (the output file, the number of rows written).

    Raises:
        BadInputError: As ``read_texts``; the temporary file is removed (on SIGTERM too).
    """
    from deploykit.progress import bar as progress_bar

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reads = getattr(score, "reads", None)  # a task's own column and cell reader (see ``Scorer``)
    texts = read_texts(cfg.data, *(reads() if reads else (cfg.text_column,)))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    n = 0
    try:
        with _terminate_as_interrupt(), os.fdopen(fd, "w", encoding="utf-8") as fh, \
                progress_bar(total=_count_rows(Path(cfg.data)), unit="row", desc="predict") as bar:
            while chunk := list(islice(texts, cfg.chunk_size)):
                for result in score(chunk, n):
                    fh.write(json.dumps({"row": n, **result}) + "\n")
                    n += 1
                bar.update(len(chunk))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, n


class Scorer(Protocol):
    """What ``run`` calls on the task (``deploykit/tasks/<task>/predict.py``'s ``Scorer``, built from
    the config): the artifact loaded once, then one result per row, chunk by chunk."""

    what: str     # what a row's result is, for the log line ("predictions", "completions")
    name: str     # the model's name
    variant: str  # the variant that scores
    # Optional: ``reads() -> (column, to_text, flag)``, the column to read and how a cell becomes
    # the text (``read_texts``'s arguments), where the task reads more than ``--text-column``.

    def __call__(self, texts: list[str], first_row: int) -> list[dict[str, Any]]:
        """One result per text of a chunk whose first row is ``first_row`` (in order)."""


def run(cfg: PredictConfig) -> Path:
    """Score every row of ``cfg.data`` with the artifact's task and write ``cfg.out`` (JSONL, input
    order): ``{"row": i, ...}`` per row, the rest the task's (a classifier's ``label``, ``score``,
    ``scores``, ``truncated``; a decoder's ``completion``, ``finish_reason``, token counts).

    Args:
        cfg: The predict configuration.

    Returns:
        The predictions file.

    Raises:
        BadInputError: Bad artifact, data file, column or row (see ``read_texts``), or an option of
            another task; nothing is written to ``cfg.out``, and the temporary file is removed (on
            SIGTERM too).
        IntegrityError: An artifact file does not match its manifest.
    """
    task = tasks.get(Manifest.read(cfg.artifact).task)
    check_task(cfg, task.name, f"{cfg.artifact} is a {task.name} artifact")
    scorer: Scorer = task.part("predict").Scorer(cfg)
    out, n = write_rows(cfg, scorer)
    log.info("wrote %d %s (%s, variant %s) to %s", n, scorer.what, scorer.name, scorer.variant, out)
    return out

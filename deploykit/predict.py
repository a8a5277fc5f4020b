"""``deploykit predict``: torch-free batch scoring with an artifact, written once for both engines.

The shared contract (docs/scale-out.md): ``--data`` is a file, a folder of CSV/JSON/JSONL/Parquet
files or a URL (``deploykit.scale.storage``); each row is read with its source file and row number
(``read_rows``: the standard library for the text formats, pyarrow for Parquet), and its output
carries ``--id-column``'s value, or else ``source`` and ``row``, then the task's fields (its folder's
``predict.Scorer``: a classifier's ``label``, ``score``, ``scores``, ``truncated``; a decoder's
``completion``, ...). This module is the local engine: rows are read, scored and written chunk by
chunk in one process, to one JSONL file (``--out x.jsonl``, input order, renamed into place when
every row is scored) or to Parquet parts with the completion marker (``--out`` a folder or URL),
as the Ray engine (``deploykit.scale.ray``) writes them.

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from deploykit import __version__, tasks
from deploykit.config import PredictConfig, check_task
from deploykit.errors import BadInputError
from deploykit.files import sha256_file
from deploykit.manifest import MANIFEST, Manifest
from deploykit.scale import storage
from deploykit.scale.storage import FORMATS

log = logging.getLogger(__name__)

SOURCE, ROW = "source", "row"  # the key columns when there is no --id-column


def _not_utf8(name: str, where: str) -> BadInputError:
    return BadInputError(f"{where} of {name} is not UTF-8 text (a binary file, or another encoding such "
                         "as Latin-1); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _utf8_lines(name: str, fh: Iterable[bytes]) -> Iterator[str]:
    """The lines of a binary file as text, refusing the first one that is not UTF-8 by number
    (decoding line by line names the line; a text-mode file fails somewhere in an 8 KiB block)."""
    for number, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(name, f"line {number}") from None


def _csv_rows(name: str, fh: BinaryIO) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(_utf8_lines(name, fh))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise BadInputError(f"row {reader.line_num} of {name} has a field over {csv.field_size_limit()} "
                                    "characters (the CSV reader's limit): usually a quote that is never "
                                    "closed; fix the quoting, or convert the file to JSONL") from None
            raise BadInputError(f"row {reader.line_num} of {name} is not valid CSV ({exc}); fix the row "
                                "or convert the file to JSONL") from None
        yield row


def _jsonl_rows(name: str, fh: BinaryIO) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(_utf8_lines(name, fh), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise BadInputError(f"line {number} of {name} is not valid JSON ({exc}); fix the line "
                                "or convert the file") from None


def _json_rows(name: str, fh: BinaryIO) -> Iterator[dict[str, Any]]:
    try:
        rows = json.loads(fh.read().decode("utf-8"))
    except UnicodeDecodeError:
        raise _not_utf8(name, "the text") from None
    except (ValueError, RecursionError) as exc:
        raise BadInputError(f"{name} is not valid JSON ({exc}); for one object per line name the "
                            "file .jsonl") from None
    if not isinstance(rows, list):
        raise BadInputError(f"{name} must hold a JSON list of objects (or use JSONL, one per line)")
    yield from rows


def _parquet_rows(name: str, fh: Any, columns: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file, reading only ``columns`` (each ``(column, the option naming it)``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError(f"reading {name} needs pyarrow, which is not installed; pip install pyarrow "
                            "(or pip install 'deploykit[ray]'), or convert the file to CSV/JSONL") from None
    try:
        parquet = pq.ParquetFile(fh)
    except (pa.ArrowException, OSError, ValueError) as exc:  # ArrowInvalid, ...: all mean "not Parquet"
        raise BadInputError(f"{name} is not a readable Parquet file ({exc}); rewrite it or remove it") from None
    names = parquet.schema_arrow.names
    for column, option in columns:
        if column not in names:
            raise BadInputError(f"{name} has no column {column!r} (columns: {', '.join(names)}); pass {option}")
    for batch in parquet.iter_batches(columns=[column for column, _ in columns]):
        yield from batch.to_pylist()


@dataclass(frozen=True)
class TextSource:
    """Where a row's text comes from: a column, how one of its cells becomes the text, and the
    option that names the column (for messages). Each task's ``predict.text_source(cfg)`` gives one:
    ``--text-column`` as it is for most; a token classifier may read ``--tokens-column`` and join
    a word-level row's tokens."""

    column: str
    to_text: Callable[[Any], str] | None = None  # raises ValueError saying what is wrong with the cell
    flag: str = "--text-column"
    # Further columns read beside the first, each (column, the option naming it): a text-pair model's
    # second text (``--text-pair-column``), a question's context (``--context-column``). A row's text
    # is then the tuple of its columns' texts, in this order (each checked as the first is).
    more: tuple[tuple[str, str], ...] = ()

    def columns(self) -> list[tuple[str, str]]:
        """(column, the option naming it) of each column a row's text is read from."""
        return [(self.column, self.flag), *self.more]

    def text(self, cell: Any) -> str:
        """The text of a cell (non-string values as ``str`` without ``to_text``).

        Raises:
            ValueError: ``to_text`` refuses the cell.
        """
        if self.to_text is None:
            return cell if isinstance(cell, str) else str(cell)
        return self.to_text(cell)


def read_rows(fs: Any, path: str, name: str, source: TextSource, id_column: str | None = None
              ) -> Iterator[tuple[int, str, Any]]:
    """Stream one data file's rows: ``(row number from 0, text, id value or None)``.

    Args:
        fs: The fsspec filesystem holding the file (``deploykit.scale.storage.locate``).
        path: The file's path on ``fs`` (``.csv``, ``.json``, ``.jsonl`` or ``.parquet``).
        name: How messages name the file (its name relative to ``--data``).
        source: The column holding the text and how a cell becomes it (the task's ``text_source``).
        id_column: A column carried to the output (``--id-column``), or None.

    Yields:
        Each row's number, text (non-string values as ``str``; with ``source.more`` the tuple of
        the row's texts, such as ``(text, text_pair)``) and id.

    Raises:
        BadInputError: Unknown format, a file that is not UTF-8 or not valid CSV/JSON/Parquet, no
            rows at all, a missing column, or a row without text or id, with blank text (the
            service's rule: it answers 400 to blank texts) or with text that is not Unicode; each
            names the file and the row (counted from 1).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise BadInputError(f"cannot read {name}: use one of {', '.join(FORMATS)}")
    with storage.open_binary(fs, path) as fh:
        rows = {".csv": lambda: _csv_rows(name, fh), ".jsonl": lambda: _jsonl_rows(name, fh),
                ".json": lambda: _json_rows(name, fh),
                ".parquet": lambda: _parquet_rows(name, fh, source.columns()
                                                   + ([(id_column, "--id-column")] if id_column else []))
                }[suffix]()
        number = 0
        for number, row in enumerate(rows, 1):
            texts = [_row_text(row, column, flag, source, number, name) for column, flag in source.columns()]
            text: Any = tuple(texts) if source.more else texts[0]
            ident = None
            if id_column:
                ident = row.get(id_column)
                if ident is None:
                    raise BadInputError(f"row {number} of {name} has no {id_column!r} value; pass the right "
                                        "--id-column or fill the row")
            yield number - 1, text, ident
    if number == 0:
        raise BadInputError(f"{name} holds no rows to score; pass a file with at least one row")


def _row_text(row: Any, column: str, flag: str, source: TextSource, number: int, name: str) -> str:
    """One column's text of a row, or a ``BadInputError`` naming the row and what to fix."""
    value = row.get(column) if isinstance(row, dict) else None
    if value is None:
        keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise BadInputError(f"row {number} of {name} has no {column!r} value (it has: {keys}); "
                            f"pass the right {flag} or fix the row")
    try:
        text = source.text(value)
    except ValueError as exc:
        raise BadInputError(f"row {number} of {name}: column {column!r} {exc}; fix the row") from None
    if not text.strip():
        raise BadInputError(f"row {number} of {name} has a blank {column!r} (the service refuses "
                            "blank texts too); remove or fill the row")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInputError(f"row {number} of {name} holds a {column!r} that is not Unicode text "
                            "(a lone surrogate such as \\ud800); fix the row") from None
    return text


def _count_rows(fs: Any, files: list[tuple[str, str]]) -> int | None:
    """Rows of every file, for the progress bar (Parquet footers only; None otherwise)."""
    if not all(path.lower().endswith(".parquet") for _, path in files):
        return None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # read_rows says what to install
        return None

    total = 0
    for _, path in files:
        try:
            with fs.open(path, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        except (pa.ArrowException, OSError, ValueError):  # read_rows names the broken file
            return None
    return total


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


class Scorer(Protocol):
    """What the engines call on the task (``deploykit/tasks/<task>/predict.py``'s ``Scorer``, built
    from the config): the artifact verified and loaded once (once per Ray worker), then one result
    per row, batch by batch. The task's ``predict.batch_rows(cfg, manifest)`` says how many rows a
    batch should hold (a decoder's by tokens: decoding is slower), and its
    ``predict.text_source(cfg)`` which column holds the text (a ``TextSource``)."""

    what: str     # what a row's result is, for the log line ("predictions", "completions")
    name: str     # the model's name
    variant: str  # the variant that scores

    def __call__(self, texts: list[str], keys: list[int]) -> list[dict[str, Any]]:
        """One result per text, in order; ``keys`` are the rows' numbers in their files (the same
        under every engine: a task that samples seeds each row with ``seed + key``)."""


def key_columns(cfg: PredictConfig) -> list[str]:
    """The columns that identify an output row: ``--id-column``, else ``source`` and ``row``."""
    return [cfg.id_column] if cfg.id_column else [SOURCE, ROW]


def file_chunks(fs: Any, path: str, name: str, cfg: PredictConfig, source: TextSource, size: int
                ) -> Iterator[dict[str, list]]:
    """One file's rows in chunks of ``size``, as columns: ``source``, ``row``, the id (with
    ``--id-column``) and ``text`` (read as the task's ``source`` says).

    Raises:
        BadInputError: As ``read_rows``.
    """
    rows = read_rows(fs, path, name, source, cfg.id_column)
    while chunk := list(islice(rows, size)):
        columns: dict[str, list] = {SOURCE: [name] * len(chunk), ROW: [r for r, _, _ in chunk]}
        if cfg.id_column:
            columns[cfg.id_column] = [i for _, _, i in chunk]
        columns["text"] = [t for _, t, _ in chunk]
        yield columns


def score_chunk(scorer: Scorer, chunk: dict[str, list], cfg: PredictConfig) -> list[dict[str, Any]]:
    """The output records of a chunk: its key columns, then the task's result.

    Raises:
        BadInputError: ``--id-column`` names one of the task's output fields.
    """
    results = scorer(chunk["text"], chunk[ROW])
    keys = key_columns(cfg)
    if results and cfg.id_column in results[0]:
        raise BadInputError(f"--id-column {cfg.id_column!r} is also a field of the output ({', '.join(results[0])}); "
                            "rename the column in the data")
    return [{**{k: chunk[k][i] for k in keys}, **result} for i, result in enumerate(results)]


def completion_record(cfg: PredictConfig, scorer_name: str, variant: str, task: str,
                      parts: list[tuple[str, int]], engine: str, **extra: Any) -> dict[str, Any]:
    """The completion marker's record (``_deploykit.json``), written after every part.

    Args:
        cfg: The predict configuration.
        scorer_name, variant, task: The artifact's model name, the variant that scored, its task.
        parts: ``(part file, rows)`` of every Parquet part (``storage.parts``).
        engine: ``local`` or ``ray``.
        **extra: Engine details (workers, ...).

    Returns:
        ``{"rows", "parts", "artifact", "variant", "manifest_sha256", ...}``.
    """
    return {"rows": sum(n for _, n in parts), "parts": [{"file": f, "rows": n} for f, n in parts],
            "artifact": scorer_name, "task": task, "variant": variant,
            "manifest_sha256": sha256_file(Path(cfg.artifact) / MANIFEST),
            "batch_dependent_allowed": bool(cfg.allow_batch_dependent), "engine": engine,
            "data": cfg.data, "text_column": cfg.text_column, "key_columns": key_columns(cfg),
            "deploykit": __version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra}


def writes_jsonl(cfg: PredictConfig) -> bool:
    """Whether ``--out`` is one JSONL file (a local ``.jsonl`` path) rather than a Parquet folder."""
    return cfg.out.lower().endswith(".jsonl") and not storage.is_url(cfg.out)


def _write_jsonl(cfg: PredictConfig, scorer: Scorer, loc: storage.Location, files: list[tuple[str, str]],
                 source: TextSource, size: int) -> int:
    """Every row as one JSON line, in input order, to a temporary file renamed to ``--out`` at the end."""
    from deploykit.progress import bar as progress_bar

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    n = 0
    try:
        with _terminate_as_interrupt(), os.fdopen(fd, "w", encoding="utf-8") as fh, \
                progress_bar(total=_count_rows(loc.fs, files), unit="row", desc="predict") as bar:
            for name, path in files:
                for chunk in file_chunks(loc.fs, path, name, cfg, source, size):
                    for record in score_chunk(scorer, chunk, cfg):
                        fh.write(json.dumps(record) + "\n")
                        n += 1
                    bar.update(len(chunk["text"]))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _write_parts(cfg: PredictConfig, scorer: Scorer, loc: storage.Location, out: storage.Location,
                 files: list[tuple[str, str]], source: TextSource, size: int) -> None:
    """One Parquet part per input file (``part-00000.parquet``, ...), a row group per chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deploykit.progress import bar as progress_bar

    with _terminate_as_interrupt(), progress_bar(total=_count_rows(loc.fs, files), unit="row", desc="predict") as bar:
        for index, (name, path) in enumerate(files):
            writer = None
            try:
                for chunk in file_chunks(loc.fs, path, name, cfg, source, size):
                    table = pa.Table.from_pylist(score_chunk(scorer, chunk, cfg))
                    if writer is None:
                        writer = pq.ParquetWriter(out.fs.open(out.join(f"part-{index:05d}{storage.PART_SUFFIX}"), "wb"),
                                                  table.schema)
                    writer.write_table(table.cast(writer.schema))
                    bar.update(len(chunk["text"]))
            finally:
                if writer is not None:
                    writer.close()


def check_engine(cfg: PredictConfig, manifest: Manifest, task: tasks.Task) -> None:
    """The refusals every engine makes before it reads a row: another task's options.

    Raises:
        ConfigError: An option of another task.
    """
    check_task(cfg, task.name, f"{cfg.artifact} is a {task.name} artifact")


def run(cfg: PredictConfig) -> Path | str:
    """Score every row of ``cfg.data`` with the artifact's task in this process (the local engine).

    Writes ``cfg.out``: a ``.jsonl`` file (one line per row, input order) or a folder (or URL) of
    Parquet parts, one per input file, with the completion marker written last. Each output row holds
    ``--id-column``'s value, else ``source`` (the file, relative to ``--data``) and ``row`` (from 0),
    then the task's fields (a classifier's ``label``, ``score``, ``scores``, ``truncated``; a
    decoder's ``completion``, ``finish_reason``, token counts).

    Args:
        cfg: The predict configuration.

    Returns:
        The predictions file or folder.

    Raises:
        BadInputError: Bad artifact, data, column or row (see ``read_rows``), an output folder that
            holds files (without ``--overwrite``), or an option of another task; nothing is left at
            ``cfg.out`` (the temporary file or the parts are removed, on SIGTERM too).
        IntegrityError: An artifact file does not match its manifest.
    """
    manifest = Manifest.read(cfg.artifact)
    task = tasks.get(manifest.task)
    check_engine(cfg, manifest, task)
    options = storage.parse_options(cfg.storage_options)
    loc = storage.locate(cfg.data, options, "--data")
    files = storage.input_files(loc)
    module = task.part("predict")
    size, source = module.batch_rows(cfg, manifest), module.text_source(cfg)
    if writes_jsonl(cfg):
        scorer: Scorer = module.Scorer(cfg)
        n = _write_jsonl(cfg, scorer, loc, files, source, size)
        log.info("wrote %d %s (%s, variant %s) to %s", n, scorer.what, scorer.name, scorer.variant, cfg.out)
        return Path(cfg.out)
    out = storage.locate(cfg.out, options, "--out")
    storage.prepare_output(out, cfg.overwrite)
    try:
        scorer = module.Scorer(cfg)
        _write_parts(cfg, scorer, loc, out, files, source, size)
        record = completion_record(cfg, scorer.name, scorer.variant, task.name, storage.parts(out), "local")
        storage.write_marker(out, record)
    except BaseException:
        storage.clear(out)
        raise
    log.info("wrote %d %s (%s, variant %s) in %d part(s) to %s", record["rows"], scorer.what, scorer.name,
             scorer.variant, len(record["parts"]), cfg.out)
    return cfg.out

"""token-classification rows: word-level or span-level data in, sentences with character-span entities out.

Two shapes, in the file formats every task reads (``deploykit.data``: CSV, JSON, JSONL, Parquet, a
``datasets.save_to_disk`` folder):

- **word-level** (CoNLL-2003, Hugging Face ``datasets``): ``--tokens-column`` (token lists) and
  ``--tags-column`` (one tag per token: strings, or ids named by ``--tag-names`` or by a saved data
  set's ClassLabel feature) in ``--tag-scheme`` iob1, iob2 or bioes. The text is the tokens joined
  by single spaces, so each token's character span is known.
- **span-level**: ``--text-column`` and ``--entities-column`` with character offsets
  (``formats``: deploykit's spans, doccano, Label Studio; detected and logged).

Either way a row becomes ``(text, entities)`` with entities as ``(type, start, end)`` character
spans, which is what evaluation compares and the service answers. A word is what the model's own
pre-tokenizer splits (its offsets), so a span that starts or ends inside one is refused. Rows that
cannot be used are refused by row and column (exit 2), or skipped and counted with
``--skip-bad-rows``. Splits are ``deploykit.data``'s (seeded 80/10/10, ``--group-column``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.config import DataConfig
from deploykit.data import (SPLIT_NAMES, Splits, group_cells, read_frames, require_columns, slice_cells,
                            source_sha256, subsample, three_splits)
from deploykit.errors import BadInputError
from deploykit.tasks.token_classification import formats, tags
from deploykit.tasks.windows import Window, word_spans

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

Entity = tuple[str, int, int]  # (type, start, end): a character span of the text
LABEL_STUDIO_DATA = "data"     # Label Studio puts a task's text under this object


@dataclass
class Sentences:
    """One split: texts and their entities (character spans, sorted by start)."""

    texts: list[str]
    entities: list[list[Entity]]
    slices: list[str] | None = None  # each row's value of --slice-column, when asked for

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, rows: list[tuple], slice_column: str | None) -> Sentences:
        """From (text, entities, slice, group) rows."""
        return cls([r[0] for r in rows], [list(r[1]) for r in rows], [r[2] for r in rows] if slice_column else None)

    def types(self) -> set[str]:
        return {kind for found in self.entities for kind, _, _ in found}


@dataclass
class EntitySplits(Splits[Sentences]):
    """The three splits, the IOB2 label list built from the training split's entity types, how the
    data was read and how many rows ``--skip-bad-rows`` skipped."""

    label_names: list[str] = field(default_factory=list)
    shape: str = ""
    skipped: int = 0


def backend(tokenizer: Any) -> Any:
    """A ``tokenizers.Tokenizer`` copy of a (fast) tokenizer with no truncation and no padding: it
    splits whole texts into the model's words."""
    inner = getattr(tokenizer, "backend_tokenizer", tokenizer)
    copy = type(inner).from_str(inner.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def words(tokenizer: Any, texts: list[str]) -> list[list[tuple[int, int]]]:
    """The character spans of each text's pre-tokenizer words (``backend(tokenizer)``'s encodings)."""
    out = []
    for encoding in tokenizer.encode_batch(texts):
        window = Window(0, 0, encoding.ids, encoding.type_ids, encoding.offsets, encoding.special_tokens_mask,
                        encoding.tokens, encoding.word_ids)
        out.append(word_spans([window]))
    return out


# --- reading cells -----------------------------------------------------------------------------

class RowProblems:
    """The good rows of a frame and the problems of the bad ones (``row N of column 'C': why``); shared
    by the span tasks' readers."""

    def __init__(self, where: str) -> None:
        self.where, self.rows, self.problems = where, [], []

    def bad(self, row: int, column: str, why: str) -> None:
        self.problems.append(f"{self.where}: row {row + 1} of column '{column}' {why}")


def refuse_or_skip(problems: list[str], skip: bool, where: str, rows: dict[str, list]) -> None:
    """The first bad row as the error (with the count of the others), or with ``--skip-bad-rows`` a warning.

    Raises:
        BadInputError: A bad row without ``skip``, or no usable row left.
    """
    if problems and not skip:
        more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        raise BadInputError(f"{problems[0]}{more}; fix or remove the row, or pass --skip-bad-rows to skip "
                            "such rows")
    if problems:
        log.warning("--skip-bad-rows: skipped %d row(s) of %s, e.g. %s", len(problems), where, problems[0])
    if not any(rows.values()):
        raise BadInputError(f"{where} has no usable rows; fix the data (see --skip-bad-rows' warnings)")


def _tag_names(cfg: DataConfig) -> list[str] | None:
    """--tag-names, else the ClassLabel names of a saved data set's tags column, else None."""
    if cfg.tag_names:
        return [n.strip() for n in cfg.tag_names.split(",")]
    folder = Path(cfg.data)
    if not folder.is_dir():
        return None
    for info in sorted(folder.rglob("dataset_info.json")):
        try:
            feature = json.loads(info.read_text())["features"][cfg.tags_column]["feature"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(feature, dict) and isinstance(feature.get("names"), list):
            return [str(n) for n in feature["names"]]
    return None


def _word_level(frame: pd.DataFrame, cfg: DataConfig, out: RowProblems, extra: list[tuple]) -> None:
    """(text, entities) of word-level rows: tokens joined by spaces, tags decoded to spans."""
    names = _tag_names(cfg)
    for i, (cell_tokens, cell_tags) in enumerate(zip(frame[cfg.tokens_column].tolist(), frame[cfg.tags_column].tolist())):
        try:
            words = formats.tokens(cell_tokens)
        except formats.CellError as exc:
            out.bad(i, cfg.tokens_column, str(exc))
            continue
        try:
            labels = formats.tags(cell_tags, names)
            if len(labels) != len(words):
                raise formats.CellError(f"has {len(labels)} tags for the {len(words)} tokens of column "
                                        f"'{cfg.tokens_column}'; give one tag per token")
            found = tags.decode(labels, cfg.tag_scheme, cfg.strict_tags)
        except (formats.CellError, tags.TagError) as exc:
            out.bad(i, cfg.tags_column, str(exc))
            continue
        starts, position = [], 0
        for word in words:
            starts.append(position)
            position += len(word) + 1
        text = " ".join(words)
        out.rows.append((text, [(kind, starts[a], starts[b] + len(words[b])) for kind, a, b in found], *extra[i]))


def _texts_of(frame: pd.DataFrame, column: str) -> list[Any]:
    """The text column, or (a Label Studio export) the ``data`` object's field of that name."""
    if column in frame.columns:
        return frame[column].tolist()
    return [d.get(column) if isinstance(d, dict) else None for d in frame[LABEL_STUDIO_DATA].tolist()]


def _check_spans(text: str, found: list[Entity], spans: list[tuple[int, int]]) -> tuple[list[Entity], str | None]:
    """The entities trimmed of spaces at their ends and sorted, or why they cannot be used."""
    checked = []
    for n, (kind, start, end) in enumerate(found, 1):
        if not 0 <= start < end <= len(text):
            return [], f"entity {n} ({kind} {start}-{end}) lies outside the text of {len(text)} characters"
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            return [], f"entity {n} ({kind}) covers only spaces"
        checked.append((kind, start, end))
    checked.sort(key=lambda e: (e[1], e[2]))
    for a, b in zip(checked, checked[1:]):
        if b[1] < a[2]:
            return [], f"has overlapping entities {a[0]} {a[1]}-{a[2]} and {b[0]} {b[1]}-{b[2]}; keep one of them"
    for kind, start, end in checked:
        inside = [w for w in spans if w[0] >= start and w[1] <= end]
        split = [w for w in spans if w[0] < start < w[1] or w[0] < end < w[1]]
        if split:
            w = split[0]
            return [], (f"has the entity {kind} {start}-{end} ({text[start:end]!r}) that splits the word "
                        f"{text[w[0]:w[1]]!r} ({w[0]}-{w[1]}; a word is what the model's tokenizer splits); "
                        "move the offsets to word boundaries")
        if not inside:
            return [], f"has the entity {kind} {start}-{end} ({text[start:end]!r}), which covers no word"
    return checked, None


def _span_level(frame: pd.DataFrame, cfg: DataConfig, fmt: str, tokenizer: Any, out: RowProblems,
                extra: list[tuple]) -> None:
    """(text, entities) of span-level rows, checked against the text and its words."""
    column = cfg.entities_column
    parsed: list[tuple[int, str, list[Entity]]] = []
    for i, (text, cell) in enumerate(zip(_texts_of(frame, cfg.text_column), frame[column].tolist())):
        if not isinstance(text, str) or not text.strip():
            out.bad(i, cfg.text_column, "is empty or not text; remove the row or fill it with text")
            continue
        empty = cell is None or (isinstance(cell, float) and cell != cell) or (isinstance(cell, str) and not cell.strip())
        try:
            parsed.append((i, text, [] if empty else formats.entities(cell, fmt)))
        except formats.CellError as exc:
            out.bad(i, column, str(exc))
    spans = words(tokenizer, [text for _, text, _ in parsed])
    for (i, text, found), word_spans_of_text in zip(parsed, spans):
        checked, problem = _check_spans(text, found, word_spans_of_text)
        if problem:
            out.bad(i, column, problem)
        else:
            out.rows.append((text, checked, *extra[i]))


def _detect(frames: dict[str, pd.DataFrame], column: str, where: str) -> str:
    """The entities column's format, from its first non-empty cell (logged)."""
    for frame in frames.values():
        for cell in frame[column].tolist():
            fmt = formats.entity_format(cell)
            if fmt is not None:
                log.info("%s: entities column '%s' is in %s format", where, column, fmt)
                return fmt
    log.warning("%s: entities column '%s' holds no entity at all", where, column)
    return "spans"


def _read(cfg: DataConfig, tokenizer: Any, slice_column: str | None) -> tuple[dict[str, list[tuple]], str, str, int]:
    """Rows ``(text, entities, slice, group)`` by split of the source, how it was read, and the count
    of skipped rows.

    Raises:
        BadInputError: A missing column, or (without --skip-bad-rows) the first bad row.
    """
    if cfg.data == "tweets":
        raise BadInputError("the built-in 'tweets' data is labelled text for --task text-classification; give "
                            "--data a file of tokens and tags, or of texts and entities, for token-classification")
    frames, where = read_frames(cfg.data)
    if cfg.entities_column:
        require_columns(frames, where, {"entities": cfg.entities_column})
        fmt = _detect(frames, cfg.entities_column, where)
        for split, frame in frames.items():
            if cfg.text_column not in frame.columns and not (
                    fmt == "label-studio" and LABEL_STUDIO_DATA in frame.columns):
                require_columns({split: frame}, where, {"text": cfg.text_column})
        shape = f"span-level ({fmt}: '{cfg.text_column}', '{cfg.entities_column}')"
    else:
        for split, frame in frames.items():
            if cfg.tokens_column not in frame.columns and cfg.tags_column not in frame.columns:
                raise BadInputError(f"{where} ({split}) has neither a tokens column '{cfg.tokens_column}' nor an "
                                    f"entities column; its columns are {', '.join(map(str, frame.columns))}; set "
                                    "--tokens-column and --tags-column (word-level data) or --entities-column "
                                    "(span-level data)")
        require_columns(frames, where, {"tokens": cfg.tokens_column, "tags": cfg.tags_column})
        fmt, shape = "", f"word-level ('{cfg.tokens_column}', '{cfg.tags_column}', {cfg.tag_scheme})"
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column})
    raw, problems = {}, []
    for split, frame in frames.items():
        rows = RowProblems(f"{where} ({split})" if len(frames) > 1 or split != "all" else where)
        extra = list(zip(slice_cells(frame, slice_column), group_cells(frame, cfg.group_column)))
        if cfg.entities_column:
            _span_level(frame, cfg, fmt, tokenizer, rows, extra)
        else:
            _word_level(frame, cfg, rows, extra)
        raw[split], problems = rows.rows, problems + rows.problems
    refuse_or_skip(problems, cfg.skip_bad_rows, where, raw)
    return raw, where, shape, len(problems)


def load_splits(cfg: DataConfig, tokenizer: Any, slice_column: str | None = None) -> EntitySplits:
    """Read ``cfg.data`` and return reproducible train/validation/test splits of sentences.

    Args:
        cfg: The data options (columns, tag scheme, --group-column, --skip-bad-rows).
        tokenizer: ``backend(model tokenizer)``: its words check span-level entities.
        slice_column: A column whose value each row keeps as ``slices``.

    Returns:
        The splits, the IOB2 labels of the training split's entity types, the data's sha256.

    Raises:
        BadInputError: Any problem with the source, named with the file, row and column.
    """
    raw, where, shape, skipped = _read(cfg, tokenizer, slice_column)
    rows = three_splits(raw, cfg, where, group=lambda row: row[3])
    types = {kind for _, found, _, _ in rows["train"] for kind, _, _ in found}
    if not types:
        raise BadInputError(f"{where}: the training split holds no entity; a token classifier needs labelled "
                            "entities (check --entities-column / --tags-column)")
    for name in ("validation", "test"):
        unknown = sorted({kind for _, found, _, _ in rows[name] for kind, _, _ in found} - types)
        if unknown:
            log.warning("%s: the %s split has entity type(s) %s that the training split lacks; the model "
                        "cannot learn them", where, name, unknown)
    rows["train"] = subsample(rows["train"], cfg.max_train_samples, cfg.seed, None)
    return EntitySplits(*(Sentences.of(rows[name], slice_column) for name in SPLIT_NAMES), source_sha256(cfg.data),
                        tags.labels(types), shape, skipped)


def held_out(dcfg: DataConfig, split: str, tokenizer: Any, label_names: list[str],
             slice_column: str | None = None) -> tuple[Sentences, str]:
    """The sentences of one split (rebuilt with ``dcfg``'s seed and ratios: exactly the ones training
    held out), or ``all`` rows of ``dcfg.data`` (a separate test file).

    Args:
        dcfg: Data options, usually from ``deploykit.data.rebuild_config``.
        split: ``test``, ``validation`` or ``all``.
        tokenizer: ``backend(model tokenizer)``.
        label_names: The model's labels (entity types outside them are refused).
        slice_column: A column whose values the rows keep as ``slices``.

    Returns:
        (the sentences, the data's sha256).

    Raises:
        BadInputError: Bad source or rows, or entity types the model does not know.
    """
    if split == "all":
        raw, where, _, _ = _read(dcfg, tokenizer, slice_column)
        rows = Sentences.of([row for part in raw.values() for row in part], slice_column)
        sha = source_sha256(dcfg.data)
    else:
        splits = load_splits(dcfg, tokenizer, slice_column)
        rows, sha, where = splits.get(split), splits.data_sha256, dcfg.data
    known = {label.split("-", 1)[-1] for label in label_names}
    unknown = sorted(rows.types() - known)
    if unknown:
        raise BadInputError(f"{where} has entity type(s) {unknown} that the model does not know (it knows "
                            f"{sorted(known - {'O'})}); pass data of the types it was trained on")
    return rows, sha

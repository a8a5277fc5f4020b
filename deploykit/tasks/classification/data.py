"""text-classification rows: a text and a label column in, labelled splits out; training batches.

The source is read and split by ``deploykit.data`` (the same seed gives the same splits on any
machine, stratified by label here for single-label data); this module reads the two columns, builds
the label map from the training split and maps held-out rows onto a model's label map.

With ``--problem-type multi-label`` a row's label cell holds any number of labels (a list, or a
string split on ``--label-separator``; empty means none) and a row's label is a tuple of label ids.
With ``--text-pair-column`` a row's text is a pair ``(text, text_pair)`` (encoded together); with
``--problem-type relevance`` (a number in [0, 1]) or ``regression`` its label is a float, and the
label map is the one output, ``score``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploykit.config import DataConfig
from deploykit.data import (SPLIT_NAMES, Splits, group_cells, read_source, require_columns, slice_cells,
                            source_sha256, subsample, text_cells, three_splits)
from deploykit.errors import BadInputError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pandas as pd


MULTI_LABEL = "multi-label"
SCORE_PROBLEMS = ("relevance", "regression")
SCORE_LABEL = "score"  # the one output of a score head (its id2label)


@dataclass
class Split:
    """One split: texts and their label ids (indices into ``LabelledSplits.label_names``): one id per
    row, or for multi-label data a tuple of ids per row (sorted, possibly empty)."""

    texts: list[Any]  # strings, or (text, text_pair) pairs
    labels: list[Any]
    slices: list[str] | None = None  # each row's value of --slice-column, when asked for
    groups: list[str | None] | None = None  # each row's --group-column value (a query id), when there is one

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, rows: list[tuple], slice_column: str | None, group_column: str | None = None) -> Split:
        """From (text, label id, slice, group) rows."""
        return cls([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows] if slice_column else None,
                   [r[3] for r in rows] if group_column else None)


@dataclass
class LabelledSplits(Splits[Split]):
    """The three splits and the label map built from the training split (names in id order)."""

    label_names: list[str] = field(default_factory=list)


def label_cells(frame: pd.DataFrame, column: str, where: str) -> list[str]:
    """Each row's label as text (a whole float as an integer), or say which row has none."""
    labels = []
    for row, value in enumerate(frame[column].tolist()):
        if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
            raise BadInputError(f"{where}: row {row + 1} has no label in column '{column}'; "
                                f"label it or remove it")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        labels.append(str(value))
    return labels


def label_set_cells(frame: pd.DataFrame, column: str, separator: str) -> list[tuple[str, ...]]:
    """Each row's labels (multi-label): a list cell as it is, a string split on ``separator``; an
    empty cell, list or string is a row without labels (allowed)."""
    out = []
    for value in frame[column].tolist():
        if value is None or (isinstance(value, float) and value != value):
            items: list[Any] = []
        elif isinstance(value, str):
            items = value.split(separator)
        elif hasattr(value, "__iter__"):  # a list, or the numpy array Parquet gives
            items = list(value)
        else:
            items = [value]
        names = [str(int(v) if isinstance(v, float) and v.is_integer() else v).strip() for v in items]
        out.append(tuple(dict.fromkeys(n for n in names if n)))  # in order, once each
    return out


def score_cells(frame: pd.DataFrame, column: str, where: str, problem: str) -> list[float]:
    """Each row's score (relevance: a number in [0, 1]; regression: any finite number), or say which
    row has none."""
    out = []
    for row, value in enumerate(frame[column].tolist()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")) or isinstance(value, bool):
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is {value!r}, not a number; "
                                f"a {problem} label is a number{' in [0, 1]' if problem == 'relevance' else ''}")
        if problem == "relevance" and not 0 <= number <= 1:
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is {number}; a relevance label is "
                                "in [0, 1] (1 relevant, 0 not); rescale it or use --problem-type regression")
        out.append(number)
    return out


def _label_cells(frame: pd.DataFrame, column: str, where: str, cfg: DataConfig) -> list[Any]:
    """A row's label: its text (single-label), a tuple of label names (multi-label), or a float
    (relevance, regression)."""
    if cfg.problem_type == MULTI_LABEL:
        return label_set_cells(frame, column, cfg.label_separator)
    if cfg.problem_type in SCORE_PROBLEMS:
        return score_cells(frame, column, where, cfg.problem_type)
    return label_cells(frame, column, where)


def _text_cells(frame: pd.DataFrame, text_column: str, where: str, cfg: DataConfig) -> list[Any]:
    """A row's text, or with --text-pair-column its (text, text_pair): a missing side names the row."""
    texts = text_cells(frame, text_column, where)
    if not cfg.text_pair_column:
        return texts
    return list(zip(texts, text_cells(frame, cfg.text_pair_column, where)))


def _names(label: Any, multi: bool) -> tuple[str, ...]:
    return label if multi else (label,)


def _row_names(split: str, n: int) -> list[str]:
    """How messages name a source's rows: "row 8" of a file without splits, "test row 8" of a split."""
    return [f"row {i + 1}" if split == "all" else f"{split} row {i + 1}" for i in range(n)]


def _enough_labels(rows: list[tuple], where: str, cfg: DataConfig) -> list[tuple]:
    """Multi-label rows with at least --min-labels labels: a row with fewer is an error naming it,
    or is dropped with --skip-bad-rows (logged)."""
    if not cfg.min_labels:
        return rows
    kept, bad = [], []
    for row in rows:
        if len(row[1]) >= cfg.min_labels:
            kept.append(row)
        elif not cfg.skip_bad_rows:
            raise BadInputError(f"{where}: {row[4]} has {len(row[1])} label(s) in column '{cfg.label_column}' and "
                                f"--min-labels is {cfg.min_labels} (the label set forbids fewer); label the row, "
                                "or pass --skip-bad-rows to leave such rows out")
        else:
            bad.append(row[4])
    if bad:
        log.warning("%s: skipped %d row(s) with fewer than %d label(s) (--skip-bad-rows): %s", where, len(bad),
                    cfg.min_labels, ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""))
    return kept


def _known_rows(rows: list[tuple], label_names: list[str], where: str, cfg: DataConfig) -> list[tuple]:
    """Multi-label rows whose labels the label map knows: a row with another label is an error
    naming it, or is dropped with --skip-bad-rows (logged)."""
    known, kept, bad = set(label_names), [], []
    for row in rows:
        unknown = [name for name in row[1] if name not in known]
        if not unknown:
            kept.append(row)
            continue
        if not cfg.skip_bad_rows:
            raise BadInputError(f"{where}: {row[4]} has label(s) {unknown} that the training split lacks "
                                f"(it has {label_names}); fix the row, add training rows for them, or pass "
                                "--skip-bad-rows to leave such rows out")
        bad.append(row[4])
    if bad:
        log.warning("%s: skipped %d row(s) with labels the training split lacks (--skip-bad-rows): %s",
                    where, len(bad), ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""))
    return kept


def _sorted_labels(labels: set[str]) -> list[str]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _where(source: str) -> str:
    return "the built-in 'tweets' data" if source == "tweets" else source


def load_splits(cfg: DataConfig, slice_column: str | None = None) -> LabelledSplits:
    """Read ``cfg.data`` and return reproducible train/validation/test splits of labelled texts.

    Splits present in the source are used as they are; missing ones are carved out of the
    training rows by a seeded split, stratified by label for single-label data. The label map is
    built from the training split.

    Args:
        cfg: The data options.
        slice_column: A column whose value each row keeps as ``slices`` (evaluation's
            per-slice report).

    Returns:
        The three splits, the label names and the data's sha256.

    Raises:
        BadInputError: Any problem with the source, named with the file, row or column.
    """
    frames, text_column, label_column = read_source(cfg.data, cfg.text_column, cfg.label_column)
    where = _where(cfg.data)
    multi, score = cfg.problem_type == MULTI_LABEL, cfg.problem_type in SCORE_PROBLEMS
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column,
                                    "text-pair": cfg.text_pair_column})
    # (text, label, slice, group, "split row N" for messages)
    raw = {name: list(zip(_text_cells(f, text_column, f"{where} ({name})", cfg),
                          _label_cells(f, label_column, f"{where} ({name})", cfg), slice_cells(f, slice_column),
                          group_cells(f, cfg.group_column), _row_names(name, len(f))))
           for name, f in frames.items()}
    if multi:
        raw = {name: _enough_labels(split, where, cfg) for name, split in raw.items()}
    rows = three_splits(raw, cfg, where, stratum=None if multi or score else (lambda row: row[1]),
                        group=lambda row: row[3])
    if score:
        encoded = {name: [row[:4] for row in rows[name]] for name in SPLIT_NAMES}
        encoded["train"] = subsample(encoded["train"], cfg.max_train_samples, cfg.seed, None)
        return LabelledSplits(*(Split.of(encoded[name], slice_column, cfg.group_column) for name in SPLIT_NAMES),
                              source_sha256(cfg.data), [SCORE_LABEL])

    label_names = _sorted_labels({n for row in rows["train"] for n in _names(row[1], multi)})
    if len(label_names) < (1 if multi else 2):
        raise BadInputError(f"{where}: the training split has only the label(s) {label_names}; "
                            + ("a multi-label classifier needs at least one label" if multi else
                               "a classifier needs at least two classes"))
    for name in ("validation", "test"):
        if multi:
            rows[name] = _known_rows(rows[name], label_names, where, cfg)
            continue
        unknown = sorted({row[1] for row in rows[name]} - set(label_names))
        if unknown:
            raise BadInputError(f"{where}: the {name} split has label(s) {unknown} that the "
                                f"training split lacks; add training rows for them or drop them")
    label_to_id = {name: i for i, name in enumerate(label_names)}

    def ids(label: Any) -> Any:
        return tuple(sorted(label_to_id[n] for n in label)) if multi else label_to_id[label]

    encoded = {name: [(row[0], ids(row[1]), row[2], row[3]) for row in rows[name]] for name in SPLIT_NAMES}
    encoded["train"] = subsample(encoded["train"], cfg.max_train_samples, cfg.seed,
                                 None if multi else [row[1] for row in encoded["train"]])
    return LabelledSplits(*(Split.of(encoded[name], slice_column, cfg.group_column) for name in SPLIT_NAMES),
                          source_sha256(cfg.data), label_names)


def load_labelled(dcfg: DataConfig, label_names: list[str], slice_column: str | None = None) -> Split:
    """Every row of a source as one split, with labels mapped onto an existing label map.

    Args:
        dcfg: The source, its columns and problem type.
        label_names: The model's label names in id order.
        slice_column: A column whose values the rows keep as ``slices``.

    Raises:
        BadInputError: As ``read_source``, or a label outside ``label_names`` (multi-label: the row is
            named, or skipped with --skip-bad-rows).
    """
    frames, text_column, label_column = read_source(dcfg.data, dcfg.text_column, dcfg.label_column)
    where = _where(dcfg.data)
    multi = dcfg.problem_type == MULTI_LABEL
    require_columns(frames, where, {"slice": slice_column, "text-pair": dcfg.text_pair_column,
                                    "group": dcfg.group_column})
    rows: list[tuple] = []
    for name, frame in frames.items():
        rows += zip(_text_cells(frame, text_column, f"{where} ({name})", dcfg),
                    _label_cells(frame, label_column, f"{where} ({name})", dcfg), slice_cells(frame, slice_column),
                    group_cells(frame, dcfg.group_column), _row_names(name, len(frame)))
    if multi:
        rows = _known_rows(_enough_labels(rows, where, dcfg), label_names, where, dcfg)
        labels: list[Any] = [tuple(sorted(label_names.index(n) for n in row[1])) for row in rows]
    elif dcfg.problem_type in SCORE_PROBLEMS:
        labels = [row[1] for row in rows]
    else:
        unknown = sorted({row[1] for row in rows} - set(label_names))
        if unknown:
            raise BadInputError(f"{where} has label(s) {unknown} that the model does not know "
                                f"(it knows {label_names})")
        labels = [label_names.index(row[1]) for row in rows]
    return Split([row[0] for row in rows], labels, [row[2] for row in rows] if slice_column else None,
                 [row[3] for row in rows] if dcfg.group_column else None)


def held_out(dcfg: DataConfig, split: str, label_names: list[str],
             slice_column: str | None = None) -> tuple[Split, str]:
    """The rows of one split (or ``all`` rows), labels mapped onto a model's label map.

    The split is rebuilt with ``dcfg``'s seed and ratios, so it is exactly the one training
    held out. Evaluation and export parity both score these rows.

    Args:
        dcfg: Data options, usually from ``deploykit.data.rebuild_config``.
        split: ``test``, ``validation`` or ``all``.
        label_names: The model's label names in id order.
        slice_column: A column whose values the rows keep as ``slices``.

    Returns:
        (the rows, the data's sha256).

    Raises:
        BadInputError: Bad source, or labels the model does not know.
    """
    if split == "all":
        return load_labelled(dcfg, label_names, slice_column), source_sha256(dcfg.data)
    splits = load_splits(dcfg, slice_column)
    if dcfg.problem_type in SCORE_PROBLEMS:
        return splits.get(split), splits.data_sha256
    unknown = sorted(set(splits.label_names) - set(label_names))
    if unknown:
        raise BadInputError(f"data {dcfg.data} has label(s) {unknown} that the checkpoint does not "
                            f"know (it knows {label_names}); pass the data it was trained on")
    rows = splits.get(split)
    remap = [label_names.index(name) for name in splits.label_names]
    if dcfg.problem_type == MULTI_LABEL:
        labels: list[Any] = [tuple(sorted(remap[i] for i in row)) for row in rows.labels]
    else:
        labels = [remap[i] for i in rows.labels]
    return Split(rows.texts, labels, rows.slices, rows.groups), splits.data_sha256


# --- tokenization and batches ----------------------------------------------------------------

def multi_hot(labels: list[tuple[int, ...]], num_labels: int):
    """Multi-label rows' label ids as a float32 matrix [rows, labels] of 0/1 (BCE's targets)."""
    import numpy as np

    out = np.zeros((len(labels), num_labels), dtype=np.float32)
    for i, ids in enumerate(labels):
        out[i, list(ids)] = 1.0
    return out


def encode(tokenizer: Any, texts: list[Any], max_length: int, truncation: str = "longest_first", **options: Any) -> Any:
    """A transformers tokenizer's encoding of texts, or of (text, text_pair) pairs (both texts
    encoded together, cut by ``truncation``), as training, evaluation and parity read them.

    Args:
        tokenizer: A transformers tokenizer.
        texts: Strings, or pairs of strings.
        max_length: Truncation length.
        truncation: ``longest_first`` or ``only_second`` (pairs).
        **options: Passed on (``padding``, ``return_tensors``).
    """
    if texts and isinstance(texts[0], tuple):
        return tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=truncation,
                         max_length=max_length, **options)
    return tokenizer(list(texts), truncation=True, max_length=max_length, **options)


def tokenize(tokenizer: Any, split: Split, max_length: int, num_labels: int | None = None,
             truncation: str = "longest_first") -> list[dict[str, Any]]:
    """Tokenize a split without padding: one dict per row (input ids, masks, label).

    Padding happens per batch in the collator, to the longest row of that batch.

    Args:
        tokenizer: The model's tokenizer.
        split: The rows.
        max_length: Truncation length.
        num_labels: Multi-label: the number of labels (each row's label becomes a 0/1 float row);
            None: single-label (a label id per row) or a score (a float per row).
        truncation: How a pair is cut (``encode``).
    """
    encoded = encode(tokenizer, split.texts, max_length, truncation)
    keys = list(encoded.keys())
    targets = split.labels if num_labels is None else multi_hot(split.labels, num_labels).tolist()
    return [{**{k: encoded[k][i] for k in keys}, "labels": targets[i]} for i in range(len(split))]


def make_collator(tokenizer: Any):
    """Dynamic padding: pad each batch to its longest row (transformers' collator)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")

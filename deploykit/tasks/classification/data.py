"""text-classification rows: a text and a label column in, labelled splits out; training batches.

The source is read and split by ``deploykit.data`` (the same seed gives the same splits on any
machine, stratified by label here for single-label data); this module reads the two columns, builds
the label map from the training split and maps held-out rows onto a model's label map.

With ``--problem-type multi-label`` a row's label cell holds any number of labels (a list, or a
string split on ``--label-separator``; empty means none) and a row's label is a tuple of label ids.
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


@dataclass
class Split:
    """One split: texts and their label ids (indices into ``LabelledSplits.label_names``): one id per
    row, or for multi-label data a tuple of ids per row (sorted, possibly empty)."""

    texts: list[str]
    labels: list[Any]
    slices: list[str] | None = None  # each row's value of --slice-column, when asked for

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, rows: list[tuple], slice_column: str | None) -> Split:
        """From (text, label id, slice) rows."""
        return cls([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows] if slice_column else None)


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


def _label_cells(frame: pd.DataFrame, column: str, where: str, cfg: DataConfig) -> list[Any]:
    """A row's label: its text (single-label), or a tuple of label names (multi-label)."""
    if cfg.problem_type == MULTI_LABEL:
        return label_set_cells(frame, column, cfg.label_separator)
    return label_cells(frame, column, where)


def _names(label: Any, multi: bool) -> tuple[str, ...]:
    return label if multi else (label,)


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
            raise BadInputError(f"{where}: row {row[4]} has label(s) {unknown} that the training split lacks "
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
    multi = cfg.problem_type == MULTI_LABEL
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column})
    # (text, label, slice, group, "split row N" for messages)
    raw = {name: list(zip(text_cells(f, text_column, f"{where} ({name})"),
                          _label_cells(f, label_column, f"{where} ({name})", cfg), slice_cells(f, slice_column),
                          group_cells(f, cfg.group_column), [f"{name} row {i + 1}" for i in range(len(f))]))
           for name, f in frames.items()}
    rows = three_splits(raw, cfg, where, stratum=None if multi else (lambda row: row[1]), group=lambda row: row[3])

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

    encoded = {name: [(row[0], ids(row[1]), row[2]) for row in rows[name]] for name in SPLIT_NAMES}
    encoded["train"] = subsample(encoded["train"], cfg.max_train_samples, cfg.seed,
                                 None if multi else [label for _, label, _ in encoded["train"]])
    return LabelledSplits(*(Split.of(encoded[name], slice_column) for name in SPLIT_NAMES),
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
    require_columns(frames, where, {"slice": slice_column})
    rows: list[tuple] = []
    for name, frame in frames.items():
        rows += zip(text_cells(frame, text_column, f"{where} ({name})"),
                    _label_cells(frame, label_column, f"{where} ({name})", dcfg), slice_cells(frame, slice_column),
                    [None] * len(frame), [f"{name} row {i + 1}" for i in range(len(frame))])
    if multi:
        rows = _known_rows(rows, label_names, where, dcfg)
        labels: list[Any] = [tuple(sorted(label_names.index(n) for n in row[1])) for row in rows]
    else:
        unknown = sorted({row[1] for row in rows} - set(label_names))
        if unknown:
            raise BadInputError(f"{where} has label(s) {unknown} that the model does not know "
                                f"(it knows {label_names})")
        labels = [label_names.index(row[1]) for row in rows]
    return Split([row[0] for row in rows], labels, [row[2] for row in rows] if slice_column else None)


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
    return Split(rows.texts, labels, rows.slices), splits.data_sha256


# --- tokenization and batches ----------------------------------------------------------------

def multi_hot(labels: list[tuple[int, ...]], num_labels: int):
    """Multi-label rows' label ids as a float32 matrix [rows, labels] of 0/1 (BCE's targets)."""
    import numpy as np

    out = np.zeros((len(labels), num_labels), dtype=np.float32)
    for i, ids in enumerate(labels):
        out[i, list(ids)] = 1.0
    return out


def tokenize(tokenizer: Any, split: Split, max_length: int, num_labels: int | None = None) -> list[dict[str, Any]]:
    """Tokenize a split without padding: one dict per row (input ids, masks, label).

    Padding happens per batch in the collator, to the longest row of that batch.

    Args:
        tokenizer: The model's tokenizer.
        split: The rows.
        max_length: Truncation length.
        num_labels: Multi-label: the number of labels (each row's label becomes a 0/1 float row);
            None: single-label (a label id per row).
    """
    encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    targets = split.labels if num_labels is None else multi_hot(split.labels, num_labels).tolist()
    return [{**{k: encoded[k][i] for k in keys}, "labels": targets[i]} for i in range(len(split))]


def make_collator(tokenizer: Any):
    """Dynamic padding: pad each batch to its longest row (transformers' collator)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")

"""text-classification rows: a text and a label column in, labelled splits out; training batches.

The source is read and split by ``deploykit.data`` (the same seed gives the same splits on any
machine, stratified by label here); this module reads the two columns, builds the label map from
the training split and maps held-out rows onto a model's label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploykit.config import DataConfig
from deploykit.data import (SPLIT_NAMES, Splits, group_cells, read_source, require_columns, slice_cells,
                            source_sha256, subsample, text_cells, three_splits)
from deploykit.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Split:
    """One split: texts and their label ids (indices into ``LabelledSplits.label_names``)."""

    texts: list[str]
    labels: list[int]
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


def _sorted_labels(labels: set[str]) -> list[str]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _where(source: str) -> str:
    return "the built-in 'tweets' data" if source == "tweets" else source


def load_splits(cfg: DataConfig, slice_column: str | None = None) -> LabelledSplits:
    """Read ``cfg.data`` and return reproducible train/validation/test splits of labelled texts.

    Splits present in the source are used as they are; missing ones are carved out of the
    training rows by a seeded split stratified by label. The label map is built from the
    training split.

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
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column})
    raw = {name: list(zip(text_cells(f, text_column, f"{where} ({name})"),
                          label_cells(f, label_column, f"{where} ({name})"), slice_cells(f, slice_column),
                          group_cells(f, cfg.group_column)))
           for name, f in frames.items()}
    rows = three_splits(raw, cfg, where, stratum=lambda row: row[1], group=lambda row: row[3])

    label_names = _sorted_labels({row[1] for row in rows["train"]})
    if len(label_names) < 2:
        raise BadInputError(f"{where}: the training split has only the label {label_names}; "
                            f"a classifier needs at least two classes")
    for name in ("validation", "test"):
        unknown = sorted({row[1] for row in rows[name]} - set(label_names))
        if unknown:
            raise BadInputError(f"{where}: the {name} split has label(s) {unknown} that the "
                                f"training split lacks; add training rows for them or drop them")
    label_to_id = {name: i for i, name in enumerate(label_names)}
    encoded = {name: [(text, label_to_id[label], sl) for text, label, sl, _ in rows[name]] for name in SPLIT_NAMES}
    encoded["train"] = subsample(encoded["train"], cfg.max_train_samples, cfg.seed,
                                 [label for _, label, _ in encoded["train"]])
    return LabelledSplits(*(Split.of(encoded[name], slice_column) for name in SPLIT_NAMES),
                          source_sha256(cfg.data), label_names)


def load_labelled(source: str, text_column: str, label_column: str, label_names: list[str],
                  slice_column: str | None = None) -> Split:
    """Every row of a source as one split, with labels mapped onto an existing label map.

    Raises:
        BadInputError: As ``read_source``, or a label outside ``label_names``.
    """
    frames, text_column, label_column = read_source(source, text_column, label_column)
    where = _where(source)
    require_columns(frames, where, {"slice": slice_column})
    texts, labels, slices = [], [], []
    for name, frame in frames.items():
        texts += text_cells(frame, text_column, f"{where} ({name})")
        labels += label_cells(frame, label_column, f"{where} ({name})")
        slices += slice_cells(frame, slice_column)
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise BadInputError(f"{where} has label(s) {unknown} that the model does not know "
                            f"(it knows {label_names})")
    return Split(texts, [label_names.index(label) for label in labels], slices if slice_column else None)


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
        return (load_labelled(dcfg.data, dcfg.text_column, dcfg.label_column, label_names, slice_column),
                source_sha256(dcfg.data))
    splits = load_splits(dcfg, slice_column)
    unknown = sorted(set(splits.label_names) - set(label_names))
    if unknown:
        raise BadInputError(f"data {dcfg.data} has label(s) {unknown} that the checkpoint does not "
                            f"know (it knows {label_names}); pass the data it was trained on")
    rows = splits.get(split)
    remap = [label_names.index(name) for name in splits.label_names]
    return Split(rows.texts, [remap[i] for i in rows.labels], rows.slices), splits.data_sha256


# --- tokenization and batches ----------------------------------------------------------------

def tokenize(tokenizer: Any, split: Split, max_length: int) -> list[dict[str, Any]]:
    """Tokenize a split without padding: one dict per row (input ids, masks, label).

    Padding happens per batch in the collator, to the longest row of that batch.
    """
    encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": split.labels[i]} for i in range(len(split))]


def make_collator(tokenizer: Any):
    """Dynamic padding: pad each batch to its longest row (transformers' collator)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")

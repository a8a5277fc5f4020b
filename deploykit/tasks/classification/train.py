"""What the one training loop (``deploykit.train``) calls for text-classification.

``AutoModelForSequenceClassification`` with a new head for the data's labels; cross-entropy
(optionally class-weighted); validation accuracy, macro-F1, weighted-F1 and loss.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.config import TrainConfig
from deploykit.errors import BadInputError
from deploykit.tasks.classification import data
from deploykit.tasks.classification.scoring import classification_metrics, logits_for_rows

log = logging.getLogger(__name__)


def class_weights(cfg: TrainConfig, labels: list[int], num_labels: int):
    """Inverse-frequency class weights for the loss (scikit-learn's "balanced" rule), or None."""
    import torch

    if cfg.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    weights = len(labels) / (num_labels * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


class Training:
    """text-classification: a label per text (what the one training loop calls)."""

    what = "sequence classifier"
    summary = ("macro_f1", "accuracy", "weighted_f1", "loss")
    new_head = True  # the head is made for the data's labels, so it always trains

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.splits = cfg, data.load_splits(cfg)  # the same seed gives the same splits on every rank

    def describe(self) -> str:
        return f"labels {self.splits.label_names}"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoModelForSequenceClassification

        names = self.splits.label_names
        # A pretrained model with another head (other labels) gets a fresh head.
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True, use_safetensors=True)

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Tokenize the training and validation rows once; build the loss."""
        import torch

        cfg, splits = self.cfg, self.splits
        self.train_rows = data.tokenize(tokenizer, splits.train, cfg.max_length)
        self.validation = [{k: v for k, v in row.items() if k != "labels"}
                           for row in data.tokenize(tokenizer, splits.validation, cfg.max_length)]
        self.collate = data.make_collator(tokenizer)
        weights = class_weights(cfg, splits.train.labels, len(splits.label_names))
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        labels = batch.pop("labels")
        return self.loss_fn(model(**batch).logits.float(), labels)

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        import torch

        labels = self.splits.validation.labels
        logits = logits_for_rows(model, tokenizer, self.validation, batch_size=self.cfg.eval_batch_size,
                                 bf16=self.cfg.bf16)
        metrics = classification_metrics(labels, logits.argmax(-1).tolist(), self.splits.label_names)
        device = next(model.parameters()).device
        metrics["loss"] = float(self.loss_fn(torch.from_numpy(logits).to(device), torch.tensor(labels, device=device)))
        return metrics


# --- the checkpoint ---------------------------------------------------------------------------

def model_class() -> Any:
    """The transformers class that loads a text-classification checkpoint."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


def check_checkpoint(path: Path) -> None:
    """What a classifier's checkpoint holds beyond the shared files: label names (``id2label``).

    Raises:
        BadInputError: ``config.json`` is not JSON or names no labels.
    """
    config = path / "config.json"
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{config} is not valid JSON ({exc})") from None
    if not id2label or all(str(v).startswith("LABEL_") for v in id2label.values()):
        raise BadInputError(f"{config} has no label names (id2label); fine-tune the model with "
                            f"'deploykit train' or set id2label in config.json")


def checkpoint_labels(path: str | Path) -> list[str]:
    """The label names of a checkpoint, in id order."""
    id2label = json.loads((Path(path) / "config.json").read_text())["id2label"]
    return [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))]

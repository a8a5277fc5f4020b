"""What the one training loop (``deploykit.train``) calls for text-classification.

``AutoModelForSequenceClassification`` with a new head for the data's labels; cross-entropy
(optionally class-weighted); validation accuracy, macro-F1, weighted-F1 and loss.

Multi-label (``--problem-type multi-label``): the config's ``problem_type`` is
``multi_label_classification`` (transformers then loads it as such), the loss is binary
cross-entropy per label (optionally with per-label positive weights), and every evaluation sets
the model config's ``thresholds`` (tuned per label on the validation split, or the one
``--thresholds`` number), so the best checkpoint's ``config.json`` carries the thresholds it was
chosen with.
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
from deploykit.tasks.classification.decisions import sigmoid
from deploykit.tasks.classification.head import Classification
from deploykit.tasks.classification.scoring import (classification_metrics, logits_for_rows, multi_label_metrics,
                                                    score_metrics, tune_thresholds)

log = logging.getLogger(__name__)


def class_weights(cfg: TrainConfig, labels: list[Any], num_labels: int):
    """Inverse-frequency class weights for the loss (scikit-learn's "balanced" rule), or for
    multi-label rows each label's negatives/positives (BCE's ``pos_weight``); None for
    ``--class-weights none``."""
    import torch

    if cfg.class_weights == "none":
        return None
    if cfg.problem_type == data.MULTI_LABEL:
        positives = data.multi_hot(labels, num_labels).sum(axis=0).astype(np.float64)
        weights = (len(labels) - positives) / np.maximum(positives, 1)
    else:
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
        if cfg.thresholds != "tuned" and not self.multi_label:
            log.warning("--thresholds %s applies to --problem-type multi-label only; ignored", cfg.thresholds)
        if cfg.truncation != "longest_first" and not cfg.text_pair_column:
            log.warning("--truncation %s applies to pairs (--text-pair-column) only; ignored", cfg.truncation)
        if self.multi_label:
            self.summary = ("micro_f1", "macro_f1", "samples_f1", "loss")
        elif self.score_head:
            self.summary = ("spearman", "pearson", "ndcg_at_10", "loss")

    @property
    def multi_label(self) -> bool:
        return self.cfg.problem_type == data.MULTI_LABEL

    @property
    def score_head(self) -> bool:
        """One logit read as a number: relevance (BCE, sigmoid) or regression (MSE)."""
        return self.cfg.problem_type in data.SCORE_PROBLEMS

    def describe(self) -> str:
        return f"{self.cfg.problem_type} labels {self.splits.label_names}"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoModelForSequenceClassification

        names = self.splits.label_names
        # A pretrained model with another head (other labels) gets a fresh head.
        # transformers' problem types (its own loss follows them); a relevance head is a plain one-logit
        # model, as sentence-transformers' CrossEncoder saves it.
        problem = {data.MULTI_LABEL: Classification.MULTI, "regression": "regression"}.get(self.cfg.problem_type)
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(names), id2label=dict(enumerate(names)), problem_type=problem,
            label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True, use_safetensors=True)

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Tokenize the training and validation rows once; build the loss."""
        import torch

        cfg, splits = self.cfg, self.splits
        width = len(splits.label_names) if self.multi_label else None
        self.train_rows = data.tokenize(tokenizer, splits.train, cfg.max_length, width, cfg.truncation)
        self.validation = [{k: v for k, v in row.items() if k != "labels"}
                           for row in data.tokenize(tokenizer, splits.validation, cfg.max_length, None, cfg.truncation)]
        self.collate = data.make_collator(tokenizer)
        if self.score_head:  # one logit: BCE on [0, 1] relevance (served with sigmoid), or MSE
            self.loss_fn = torch.nn.BCEWithLogitsLoss() if cfg.problem_type == "relevance" else torch.nn.MSELoss()
            return
        weights = class_weights(cfg, splits.train.labels, len(splits.label_names))
        weights = weights.to(device) if weights is not None else None
        self.loss_fn = (torch.nn.BCEWithLogitsLoss(pos_weight=weights) if self.multi_label
                        else torch.nn.CrossEntropyLoss(weight=weights))

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if self.score_head:
            return self.loss_fn(logits[:, 0], labels.float())
        return self.loss_fn(logits, labels)

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        import torch

        labels, names = self.splits.validation.labels, self.splits.label_names
        logits = logits_for_rows(model, tokenizer, self.validation, batch_size=self.cfg.eval_batch_size,
                                 bf16=self.cfg.bf16)
        device = next(model.parameters()).device
        if self.score_head:
            scores = sigmoid(logits[:, 0]) if self.cfg.problem_type == "relevance" else logits[:, 0]
            metrics = score_metrics(labels, scores, self.splits.validation.groups)
            loss = self.loss_fn(torch.from_numpy(logits[:, 0]).to(device), torch.tensor(labels, device=device).float())
            return {**metrics, "loss": float(loss)}
        if self.multi_label:
            gold = data.multi_hot(labels, len(names))
            probs = sigmoid(logits)
            thresholds = (tune_thresholds(gold, probs) if self.cfg.thresholds == "tuned"
                          else [float(self.cfg.thresholds)] * len(names))
            # Saved with the model when this evaluation is the best: the checkpoint's thresholds.
            model.config.thresholds = thresholds
            metrics = multi_label_metrics(gold, probs >= np.asarray(thresholds), names)
            target = torch.from_numpy(gold).to(device)
        else:
            metrics = classification_metrics(labels, logits.argmax(-1).tolist(), names)
            target = torch.tensor(labels, device=device)
        metrics["loss"] = float(self.loss_fn(torch.from_numpy(logits).to(device), target))
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


def checkpoint_head(path: str | Path) -> Classification:
    """The manifest head a checkpoint exports to: its labels, problem type and (multi-label) the
    thresholds training recorded in ``config.json``.

    Raises:
        BadInputError: A multi-label checkpoint without one threshold per label.
    """
    from deploykit import checkpoint as ckpt

    config = json.loads((Path(path) / "config.json").read_text())
    labels = tuple(checkpoint_labels(path))
    train_cfg = ckpt.train_config(Path(path))
    pairs = {"truncation": train_cfg.truncation} if train_cfg is not None and train_cfg.text_pair_column else {}
    if train_cfg is not None and train_cfg.problem_type in data.SCORE_PROBLEMS:
        return Classification(labels, problem_type=train_cfg.problem_type, **pairs)
    if config.get("problem_type") != Classification.MULTI:
        return Classification(labels, **pairs)
    thresholds = config.get("thresholds")
    if not isinstance(thresholds, list) or len(thresholds) != len(labels):
        raise BadInputError(f"{Path(path) / 'config.json'} is multi_label_classification but has no 'thresholds' "
                            f"(one per label); train it with 'deploykit train --problem-type multi-label' or add "
                            "them")
    return Classification(labels, problem_type=Classification.MULTI, thresholds=tuple(map(float, thresholds)), **pairs)

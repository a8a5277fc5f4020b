"""text-length's evaluation: accuracy and macro-F1 of the buckets, per input length, worst cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.tasks.classification.evaluate import error_cases, length_buckets
from deploykit.tasks.classification.scoring import classification_metrics, predict_logits, softmax
from deploykit.tasks.classification.train import checkpoint_labels
from lengthtask.data import held_out


class Evaluation:
    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg = self.cfg, self.dcfg
        labels = checkpoint_labels(self.checkpoint)
        split, _ = held_out(dcfg, cfg.split)
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        probs = softmax(predict_logits(model, tokenizer, split.texts, max_length=dcfg.max_length))
        predicted = probs.argmax(-1).tolist()
        lengths = [len(ids) for ids in tokenizer(split.texts, truncation=True, max_length=dcfg.max_length)["input_ids"]]
        metrics = classification_metrics(split.labels, predicted, labels)
        metrics["by_length"] = length_buckets(lengths, split.labels, predicted, labels, dcfg.max_length)
        return metrics, error_cases(split.texts, split.labels, probs, labels, cfg.max_errors)

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        """No plots: the report's table says it all."""

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return f"# Length buckets of {metrics['checkpoint']}\n\n{summary(metrics)}\n"


def summary(metrics: dict[str, Any]) -> str:
    return f"{metrics['split']} ({metrics['n']} texts): bucket accuracy {metrics['accuracy']:.4f}"

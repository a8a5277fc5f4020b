"""What the one training loop needs to know about each task.

``train.run`` is a single loop for both tasks (checkpoints record which in ``deploykit.yaml``).
A task gives it the model class, the training examples and how to batch them, the loss of a
batch, and the validation metrics:

* ``Classification`` (text-classification): ``AutoModelForSequenceClassification`` with a new
  head for the data's labels; cross-entropy (optionally class-weighted); accuracy, macro-F1,
  weighted-F1 and loss.
* ``Generation`` (text-generation): ``AutoModelForCausalLM``; next-token cross-entropy on the
  completion tokens only; completion loss and perplexity, plus BLEU, chrF and exact match of
  greedy generations when ``--metric bleu``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deploykit import data, generation, prompts
from deploykit.config import CLASSIFICATION, GENERATION, TrainConfig
from deploykit.scoring import classification_metrics, logits_for_rows

log = logging.getLogger(__name__)

# Metric keys that are not one number per evaluation (kept out of metrics.jsonl's eval lines).
NESTED_METRICS = ("per_class", "sacrebleu")


def class_weights(cfg: TrainConfig, labels: list[int], num_labels: int):
    """Inverse-frequency class weights for the loss (scikit-learn's "balanced" rule), or None."""
    import torch

    if cfg.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    weights = len(labels) / (num_labels * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


class Classification:
    """text-classification: a label per text."""

    name = CLASSIFICATION
    what = "sequence classifier"
    summary = ("macro_f1", "accuracy", "weighted_f1", "loss")
    new_head = True  # the head is made for the data's labels, so it always trains

    def __init__(self, cfg: TrainConfig, splits: data.Splits) -> None:
        self.cfg, self.splits = cfg, splits

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


class Generation:
    """text-generation: a completion per prompt, by a decoder-only language model."""

    name = GENERATION
    what = "causal language model"
    summary = ("loss", "perplexity", "bleu", "chrf", "exact_match")
    new_head = False  # lm_head is pretrained

    def __init__(self, cfg: TrainConfig, splits: data.Splits) -> None:
        self.cfg, self.splits = cfg, splits

    def describe(self) -> str:
        return "prompt/completion pairs"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
        if model.config.is_encoder_decoder:
            raise ValueError(f"it is an encoder-decoder ({model.config.model_type}); text-generation "
                             f"fine-tunes decoder-only models (Llama, Qwen2, GPT-2, ...)")
        return model

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Tokenize the training and validation pairs once (prompts masked); pack if asked."""
        cfg, splits = self.cfg, self.splits
        prompts.prepare_tokenizer(tokenizer, cfg.model)
        # Saved with the checkpoint, so later stages stop where training taught the model to: at
        # the tokenizer's EOS (first), or any end token the model already had (Llama 3 has two).
        config = model.generation_config
        known = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        ends = [tokenizer.eos_token_id] + [t for t in known if t is not None and t != tokenizer.eos_token_id]
        config.eos_token_id = ends if len(ends) > 1 else ends[0]
        config.pad_token_id = tokenizer.pad_token_id
        train = prompts.encode(tokenizer, splits.train, cfg.max_length)
        self.validation = prompts.encode(tokenizer, splits.validation, cfg.max_length)
        prompts.report_truncation(train, "train", cfg.max_length)
        prompts.report_truncation(self.validation, "validation", cfg.max_length)
        self.train_rows = prompts.pack(train.rows, cfg.max_length) if cfg.packing else train.rows
        if cfg.packing:
            log.info("packing: %d training rows in %d sequences of at most %d tokens", len(train.rows),
                     len(self.train_rows), cfg.max_length)
        self.collate = prompts.make_collator(tokenizer)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        labels = batch.pop("labels")
        return generation.completion_loss(model(**batch).logits, labels)

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        cfg = self.cfg
        nll, count = generation.token_nll(model, self.collate, self.validation.rows,
                                          batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
        metrics: dict[str, Any] = {**generation.loss_metrics(nll, count), "n": len(self.validation.rows)}
        if cfg.metric == "bleu":
            new = generation.generate(model, tokenizer, self.validation.prompts(), max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            metrics.update(generation.text_metrics(texts, self.splits.validation.completions))
        return metrics


def make(cfg: TrainConfig, splits: data.Splits) -> Classification | Generation:
    """The task of a training config."""
    return (Generation if cfg.task == GENERATION else Classification)(cfg, splits)

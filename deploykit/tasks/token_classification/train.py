"""What the one training loop (``deploykit.train``) calls for token-classification.

``AutoModelForTokenClassification`` with a new head for the data's IOB2 labels. Texts are cut into
the same stride windows the runtime serves (``deploykit.tasks.windows``: ``--max-length`` tokens,
``--stride`` shared), each window one training example; labels are aligned to sub-tokens: a
word's first sub-token carries the word's tag and the others are ignored (-100), or with
``--label-all-tokens`` carry its ``I-`` tag. transformers' ``DataCollatorForTokenClassification``
pads each batch (labels with -100) and the model's own cross-entropy ignores what is not labelled.
Validation decodes entities as the runtime does (``first``: each word's first sub-token) and
scores them with seqeval; the best checkpoint is the one with the highest entity micro-F1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.config import TrainConfig
from deploykit.errors import BadInputError
from deploykit.tasks.token_classification import aggregation, data, scoring
from deploykit.tasks.token_classification.head import OUTSIDE
from deploykit.tasks.windows import Window, set_windows, windows

log = logging.getLogger(__name__)

IGNORED = -100  # the label the loss skips (transformers' and PyTorch's convention)
METRIC_STRATEGY = "first"  # how validation and evaluation read entities: where training puts labels


def encode(tokenizer: Any, texts: list[str], max_length: int, stride: int) -> list[Window]:
    """The stride windows of ``texts`` (a fast tokenizer's backend, set up as the runtime sets its own).

    Raises:
        BadInputError: A ``--stride`` that leaves a window no new tokens.
    """
    backend = data.backend(tokenizer)
    try:
        set_windows(backend, max_length, stride)
    except ValueError as exc:
        raise BadInputError(f"--stride/--max-length: {exc}") from None
    return windows(backend.encode_batch(texts), max_length, stride)


def aligned_labels(rows: list[Window], word_tags: list[list[str]], label_ids: dict[str, int],
                   label_all_tokens: bool) -> list[list[int]]:
    """Each window's label ids: the word's tag on its first sub-token; on the other sub-tokens -100, or
    (``label_all_tokens``) the word's tag as ``I-``; -100 on special tokens.

    Args:
        rows: The windows.
        word_tags: Each text's IOB2 word tags (by the words the windows' ``words`` number).
        label_ids: Label name -> id.
        label_all_tokens: Label continuation sub-tokens too.
    """
    out = []
    for row in rows:
        tags_of_text = word_tags[row.text]
        labels, previous = [], None
        for word, special in zip(row.words, row.special):
            if word is None or special:
                labels.append(IGNORED)
            elif word != previous:
                labels.append(label_ids[tags_of_text[word]])
            elif label_all_tokens:
                tag = tags_of_text[word]
                labels.append(label_ids["I-" + tag[2:] if tag.startswith("B-") else tag])
            else:
                labels.append(IGNORED)
            previous = word
        out.append(labels)
    return out


class Training:
    """token-classification: an IOB2 label per word (what the one training loop calls)."""

    what = "token classifier"
    summary = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
    new_head = True  # the head is made for the data's labels, so it always trains

    def __init__(self, cfg: TrainConfig) -> None:
        from transformers import AutoTokenizer

        from deploykit.train import resolve_model

        self.cfg = cfg
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
        except (OSError, ValueError) as exc:
            raise BadInputError(f"--model {cfg.model}: cannot load its tokenizer ({exc}); its words define "
                                "the entities' boundaries") from None
        # The same seed gives the same splits on every rank.
        self.splits = data.load_splits(cfg, data.backend(tokenizer))

    def describe(self) -> str:
        skipped = f", {self.splits.skipped} bad row(s) skipped" if self.splits.skipped else ""
        return f"{self.splits.shape}, labels {self.splits.label_names}{skipped}"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoModelForTokenClassification

        names = self.splits.label_names
        # A pretrained model with another head (other labels) gets a fresh head.
        return AutoModelForTokenClassification.from_pretrained(
            source, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True, use_safetensors=True)

    def _examples(self, tokenizer: Any, split: data.Sentences) -> tuple[list[Window], list[list[int]], list]:
        cfg = self.cfg
        rows = encode(tokenizer, split.texts, cfg.max_length, cfg.stride)
        words = data.words(data.backend(tokenizer), split.texts)
        label_ids = {n: i for i, n in enumerate(self.splits.label_names)}
        word_tags = scoring.word_tag_lists(words, split.entities)
        return rows, aligned_labels(rows, word_tags, label_ids, cfg.label_all_tokens), words

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Window and label the training and validation texts once; the padding collator."""
        from transformers import DataCollatorForTokenClassification

        rows, labels, _ = self._examples(tokenizer, self.splits.train)
        self.train_rows = [{**scoring.features(row, tokenizer), "labels": lab} for row, lab in zip(rows, labels)]
        self.validation, self.validation_labels, self.validation_words = self._examples(tokenizer, self.splits.validation)
        self.rule = aggregation.WordRule.of(data.backend(tokenizer))
        self.collate = DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
        long = sum(1 for row in rows if row.number > 0)
        if long:
            log.info("%d training window(s) continue a text longer than --max-length %d (--stride %d)",
                     long, self.cfg.max_length, self.cfg.stride)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        return model(**batch).loss

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """Entity metrics of the validation split (decoded as served, ``first``) and the token loss."""
        split, labels = self.splits.validation, self.splits.label_names
        logits = scoring.window_logits(model, tokenizer, self.validation, batch_size=self.cfg.eval_batch_size,
                                       bf16=self.cfg.bf16)
        found = scoring.decode(split.texts, self.validation, logits, METRIC_STRATEGY, labels, self.rule)
        metrics = scoring.entity_metrics(self.validation_words, split.entities,
                                         [aggregation.spans(f) for f in found])
        metrics["loss"] = token_loss(logits, self.validation_labels)
        if self.splits.skipped:
            metrics["skipped_rows"] = self.splits.skipped
        return metrics


def token_loss(logits: list[np.ndarray], labels: list[list[int]]) -> float:
    """Mean cross-entropy over the labelled tokens (what the training loss computes)."""
    total, count = 0.0, 0
    for lg, lab in zip(logits, labels):
        lab = np.asarray(lab)
        keep = lab != IGNORED
        if not keep.any():
            continue
        rows = lg[keep].astype(np.float64)
        top = rows.max(axis=-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=-1))
        total += float((log_norm - rows[np.arange(len(rows)), lab[keep]]).sum())
        count += int(keep.sum())
    return total / max(count, 1)


# --- the checkpoint ---------------------------------------------------------------------------

def model_class() -> Any:
    """The transformers class that loads a token-classification checkpoint."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification


def check_checkpoint(path: Path) -> None:
    """What a token classifier's checkpoint holds beyond the shared files: IOB2 label names.

    Raises:
        BadInputError: ``config.json`` is not JSON or its ``id2label`` is not IOB2 with ``O``.
    """
    config = path / "config.json"
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{config} is not valid JSON ({exc})") from None
    names = [str(v) for v in id2label.values()]
    if OUTSIDE not in names or not all(n == OUTSIDE or n[:2] in ("B-", "I-") for n in names):
        raise BadInputError(f"{config} has no IOB2 labels (id2label {id2label}: O, B-TYPE, I-TYPE); fine-tune "
                            "the model with 'deploykit train --task token-classification'")


def checkpoint_labels(path: str | Path) -> list[str]:
    """The label names of a checkpoint, in id order."""
    id2label = json.loads((Path(path) / "config.json").read_text())["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]

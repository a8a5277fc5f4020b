"""Scoring shared by training, evaluation and export: entity metrics (seqeval) and PyTorch window logits.

Entities are compared as the IOB2 tags of the model's words (``tags.word_tags``: a word takes the
tag of the entity it starts in), scored by ``seqeval`` in strict IOB2 mode: an entity counts only
when its type and every word match. Keys: ``entity_f1``, ``entity_precision``, ``entity_recall``
(micro over entities), ``token_accuracy`` (words whose tag is right), ``macro_f1`` and
``weighted_f1`` (over entity types), ``per_class`` ({type: {precision, recall, f1, support}}), ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deploykit.tasks.token_classification import aggregation, tags
from deploykit.tasks.windows import Window, by_text

Entity = tuple[str, int, int]


def word_tag_lists(words: Sequence[Sequence[tuple[int, int]]], entities: Sequence[Sequence[Entity]]) -> list[list[str]]:
    """The IOB2 word tags of each sentence."""
    return [tags.word_tags(w, e) for w, e in zip(words, entities)]


def entity_metrics(words: Sequence[Sequence[tuple[int, int]]], gold: Sequence[Sequence[Entity]],
                   predicted: Sequence[Sequence[Entity]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (seqeval, strict IOB2) per type and overall, and word accuracy.

    Args:
        words: Each sentence's word spans (``data.words``).
        gold: Each sentence's true entities ``(type, start, end)``.
        predicted: Each sentence's predicted entities.

    Returns:
        The metric dict (keys in the module docstring).
    """
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    true_tags, pred_tags = word_tag_lists(words, gold), word_tag_lists(words, predicted)
    report = classification_report(true_tags, pred_tags, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    micro = report.pop("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    macro = report.pop("macro avg", {"f1-score": 0.0})
    weighted = report.pop("weighted avg", {"f1-score": 0.0})
    flat_true = sum(1 for sent in true_tags for _ in sent)
    return {
        "entity_f1": float(micro["f1-score"]), "entity_precision": float(micro["precision"]),
        "entity_recall": float(micro["recall"]),
        "token_accuracy": float(accuracy_score(true_tags, pred_tags)) if flat_true else 0.0,
        "macro_f1": float(macro["f1-score"]), "weighted_f1": float(weighted["f1-score"]),
        "per_class": {kind: {"precision": float(m["precision"]), "recall": float(m["recall"]),
                             "f1": float(m["f1-score"]), "support": int(m["support"])} for kind, m in report.items()},
        "n": len(gold),
    }


def decode(texts: Sequence[str], rows: Sequence[Window], logits: Sequence[np.ndarray], strategy: str,
           labels: Sequence[str], rule: aggregation.WordRule) -> list[list[dict[str, Any]]]:
    """Each text's entities from its windows' logits (``aggregation.entities``)."""
    groups = by_text(rows)
    return [aggregation.entities(text, [rows[j] for j in groups.get(i, [])], [logits[j] for j in groups.get(i, [])],
                                 strategy, labels, rule) for i, text in enumerate(texts)]


def window_logits(model: Any, tokenizer: Any, rows: Sequence[Window], *, batch_size: int = 64,
                  bf16: bool = False, progress: bool = False) -> list[np.ndarray]:
    """PyTorch logits of each window [tokens, labels], in the rows' order.

    Rows are sorted by length so that each batch pads little (its tokenizer's ``pad``).

    Args:
        model: A transformers token-classification model.
        tokenizer: Its tokenizer (pads each batch; its ``model_input_names`` say what the model takes).
        rows: The windows.
        batch_size: Windows per forward pass.
        bf16: Run under bfloat16 autocast.
        progress: Show a progress bar.
    """
    import torch
    from deploykit.progress import bar as progress_bar

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort([row.length for row in rows], kind="stable")
    out: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32)] * len(rows)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in progress_bar(range(0, len(rows), batch_size), desc="scoring", disable=not progress, leave=False):
            index = order[start:start + batch_size]
            batch = tokenizer.pad([features(rows[i], tokenizer) for i in index], return_tensors="pt").to(device)
            logits = model(**batch).logits.float().cpu().numpy()
            for k, i in enumerate(index):
                out[i] = logits[k, :rows[i].length]
    model.train(was_training)
    return out


def features(row: Window, tokenizer: Any) -> dict[str, list[int]]:
    """A window as the model's inputs (unpadded; the inputs the tokenizer says its model takes)."""
    inputs = {"input_ids": row.ids, "attention_mask": [1] * row.length, "token_type_ids": row.type_ids}
    return {k: v for k, v in inputs.items() if k in tokenizer.model_input_names}

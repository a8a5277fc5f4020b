"""Scoring shared by training, evaluation and export: PyTorch start/end logits of windows, and every
question's answers and SQuAD metrics from them (``answers.decode``, ``squad.metrics``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deploykit.tasks.question_answering import answers, squad
from deploykit.tasks.question_answering.data import Questions
from deploykit.tasks.token_classification.scoring import features
from deploykit.tasks.windows import Window, by_text


def window_logits(model: Any, tokenizer: Any, rows: Sequence[Window], *, batch_size: int = 64, bf16: bool = False,
                  progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """PyTorch (start, end) logits of each window [tokens], in the rows' order (batches of similar length)."""
    import torch

    from deploykit.progress import bar as progress_bar

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort([row.length for row in rows], kind="stable")
    starts: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(rows)
    ends = list(starts)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for first in progress_bar(range(0, len(rows), batch_size), desc="scoring", disable=not progress, leave=False):
            index = order[first:first + batch_size]
            batch = tokenizer.pad([features(rows[i], tokenizer) for i in index], return_tensors="pt").to(device)
            out = model(**batch)
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for k, i in enumerate(index):
                starts[i], ends[i] = s[k, :rows[i].length], e[k, :rows[i].length]
    model.train(was_training)
    return starts, ends


def decode_all(split: Questions, rows: Sequence[Window], starts: Sequence[np.ndarray], ends: Sequence[np.ndarray],
               rules: answers.Rules, cls_id: int | None) -> list[answers.Decoded]:
    """Each question's decoded answers from its windows' logits."""
    groups = by_text(rows)
    return [answers.decode(context, [rows[j] for j in groups.get(i, [])], [starts[j] for j in groups.get(i, [])],
                           [ends[j] for j in groups.get(i, [])], rules, cls_id)
            for i, context in enumerate(split.contexts)]


def qa_metrics(split: Questions, decoded: Sequence[answers.Decoded], threshold: float | None = None) -> dict[str, Any]:
    """SQuAD metrics of answers decoded without the empty answer (``Rules.handle_impossible_answer``
    off): a question answers nothing when its no-answer score beats its best answer by more than
    ``threshold`` (0.0: the pipeline's own rule; None: never), with HasAns/NoAns parts and, when some
    question is unanswerable, the best null threshold (``best_f1_threshold``)."""
    golds = [split.texts(i) for i in range(len(split))]
    out = squad.metrics(golds, [answers.best_text(d, threshold) for d in decoded])
    if any(not a for a in split.answers):
        tuned = squad.metrics(golds, [answers.best_text(d, None) for d in decoded], [d.null_minus_best for d in decoded])
        out.update({k: tuned[k] for k in ("best_f1", "best_f1_threshold", "best_exact", "best_exact_threshold")})
    return out

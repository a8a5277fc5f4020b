"""What the one training loop (``deploykit.train``) calls for question-answering.

``AutoModelForQuestionAnswering`` (a start and an end logit per token). Each (question, context) pair is
cut into the windows the runtime serves (``answers.pair_windows``: ``--max-length`` tokens, the question
whole in each, the context sharing ``--doc-stride`` tokens between windows), each window one training
example, labelled with the token positions of the answer's first and last characters when the window
holds the whole answer, and with the [CLS] position otherwise (a window without the answer, or an
unanswerable question): SQuAD 2.0's recipe, which the pipeline's no-answer score reads back. The
model's own loss (the mean of the start and end cross-entropies) trains it; transformers'
``DataCollatorWithPadding`` pads each batch. Validation reads answers as served (``answers.decode``)
and the best checkpoint is the one with the highest SQuAD F1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deploykit.config import TrainConfig
from deploykit.errors import BadInputError
from deploykit.tasks.question_answering import answers, data, scoring
from deploykit.tasks.token_classification.data import backend
from deploykit.tasks.token_classification.scoring import features
from deploykit.tasks.windows import Window, set_windows

log = logging.getLogger(__name__)


def encode(tokenizer: Any, split: data.Questions, max_length: int, stride: int) -> list[Window]:
    """The windows of a split's (question, context) pairs, cut as the runtime cuts them.

    Raises:
        BadInputError: A ``--doc-stride`` that leaves a window no new tokens, or a question too long
            for a window (named by its row).
    """
    pairs = backend(tokenizer)
    try:
        set_windows(pairs, max_length, stride, pair=True)
    except ValueError as exc:
        raise BadInputError(f"--doc-stride/--max-length: {exc}") from None
    specials = pairs.num_special_tokens_to_add(True)
    question_tokens = backend(tokenizer).encode_batch(split.questions, add_special_tokens=False)
    for i, encoding in enumerate(question_tokens):
        if len(encoding.ids) + specials + stride + 1 > max_length:
            raise BadInputError(f"question {i + 1} ({split.questions[i][:60]!r}) has {len(encoding.ids)} tokens, too "
                                f"many for a window of --max-length {max_length} with --doc-stride {stride}; raise "
                                "--max-length or shorten the question")
    return answers.pair_windows(pairs, split.questions, split.contexts, max_length, stride)


def positions(row: Window, answer: tuple[str, int] | None, cls_index: int) -> tuple[int, int]:
    """The (start, end) token labels of one window: the answer's first and last tokens when the window
    holds all of it, else [CLS]."""
    if answer is None:
        return cls_index, cls_index
    text, first = answer
    last = first + len(text)
    context = [j for j, s in enumerate(row.sequences) if s == answers.CONTEXT]
    if not context or row.offsets[context[0]][0] > first or row.offsets[context[-1]][1] < last:
        return cls_index, cls_index
    start = next(j for j in context if row.offsets[j][1] > first)
    end = next(j for j in reversed(context) if row.offsets[j][0] < last)
    return start, end


class Training:
    """question-answering: an answer span per question (what the one training loop calls)."""

    what = "question-answering model"
    summary = ("f1", "exact_match", "has_ans_f1", "no_ans_f1", "best_f1")
    new_head = True  # the span head is new: it always trains

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.splits = data.load_splits(cfg)  # the same seed gives the same splits on every rank

    def describe(self) -> str:
        skipped = f", {self.splits.skipped} bad row(s) skipped" if self.splits.skipped else ""
        return f"{self.splits.shape}, {self.splits.no_answer} unanswerable training question(s){skipped}"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoConfig, AutoModelForQuestionAnswering

        # A start and an end logit per token; a pretrained model with another head gets a fresh span head.
        config = AutoConfig.from_pretrained(source)
        config.num_labels = 2
        return AutoModelForQuestionAnswering.from_pretrained(source, config=config, ignore_mismatched_sizes=True,
                                                             use_safetensors=True)

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Window and label the training questions once; window the validation ones; the padding collator."""
        from transformers import DataCollatorWithPadding

        cfg, split = self.cfg, self.splits.train
        rows = encode(tokenizer, split, cfg.max_length, cfg.doc_stride)
        self.cls_id = tokenizer.cls_token_id
        self.train_rows = []
        answered = 0
        for row in rows:
            gold = split.answers[row.text]
            cls_index = row.ids.index(self.cls_id) if self.cls_id in row.ids else 0
            start, end = positions(row, gold[0] if gold else None, cls_index)
            answered += start != cls_index
            self.train_rows.append({**features(row, tokenizer), "start_positions": start, "end_positions": end})
        log.info("%d training window(s) of %d questions, %d holding their answer (the others point at [CLS])",
                 len(rows), len(split), answered)
        self.validation = encode(tokenizer, self.splits.validation, cfg.max_length, cfg.doc_stride)
        self.collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        return model(**batch).loss

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """SQuAD EM/F1 of the validation split, answers read as served (the pipeline's null rule when the
        data has unanswerable questions), with HasAns/NoAns and the best null threshold."""
        split = self.splits.validation
        starts, ends = scoring.window_logits(model, tokenizer, self.validation, batch_size=self.cfg.eval_batch_size,
                                             bf16=self.cfg.bf16)
        decoded = scoring.decode_all(split, self.validation, starts, ends, answers.Rules(), self.cls_id)
        metrics = scoring.qa_metrics(split, decoded, 0.0 if self.splits.no_answer else None)
        if self.splits.skipped:
            metrics["skipped_rows"] = self.splits.skipped
        return metrics


# --- the checkpoint ---------------------------------------------------------------------------

def model_class() -> Any:
    """The transformers class that loads a question-answering checkpoint."""
    from transformers import AutoModelForQuestionAnswering

    return AutoModelForQuestionAnswering


def check_checkpoint(path: Path) -> None:
    """A question-answering checkpoint holds nothing beyond the shared files (no label list)."""

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


def fit_questions(tokenizer: Any, split: data.Questions, max_length: int, stride: int, max_question_len: int,
                  skip: bool, where: str) -> tuple[data.Questions, int]:
    """The questions the model takes: those of at most ``answers.question_limit`` tokens, the limit the
    runtime serves (the head's ``max_question_len`` within a window), so that training, evaluation,
    export and serving accept the same questions.

    Returns:
        (the questions that fit, how many longer ones ``skip`` left out).

    Raises:
        BadInputError: Without ``skip``, a longer question (named by its id, with the count of others).
    """
    specials = backend(tokenizer).num_special_tokens_to_add(True)
    limit = answers.question_limit(max_question_len, max_length, stride, specials)
    counts = [len(e.ids) for e in backend(tokenizer).encode_batch(split.questions, add_special_tokens=False)]
    long = [i for i, count in enumerate(counts) if count > limit]
    if long and not skip:
        i = long[0]
        more = f" (and {len(long) - 1} more)" if len(long) > 1 else ""
        raise BadInputError(f"{where}: the question with id {split.ids[i]!r} ({split.questions[i][:60]!r}) has "
                            f"{counts[i]} tokens; the model takes questions of at most {limit} tokens (--max-question-len "
                            f"{max_question_len}, windows of --max-length {max_length} sharing --doc-stride {stride})"
                            f"{more}; shorten it, raise --max-question-len, or pass --skip-bad-rows")
    if long:
        log.warning("%s: %d question(s) longer than %d tokens skipped (--skip-bad-rows)", where, len(long), limit)
    return split.pick([i for i in range(len(split)) if i not in set(long)]), len(long)


def encode(tokenizer: Any, split: data.Questions, max_length: int, stride: int) -> list[Window]:
    """The windows of a split's (question, context) pairs, cut as the runtime cuts them (the questions
    fit: ``fit_questions``).

    Raises:
        BadInputError: A ``--doc-stride`` that leaves a window no new tokens.
    """
    pairs = backend(tokenizer)
    try:
        set_windows(pairs, max_length, stride, pair=True)
    except ValueError as exc:
        raise BadInputError(f"--doc-stride/--max-length: {exc}") from None
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

        cfg = self.cfg
        # The questions the exported model will take (the export's --max-question-len default is the same).
        self.splits.train, long_train = fit_questions(tokenizer, self.splits.train, cfg.max_length, cfg.doc_stride,
                                                      cfg.max_question_len, cfg.skip_bad_rows, f"{cfg.data} (train)")
        self.splits.validation, long_validation = fit_questions(
            tokenizer, self.splits.validation, cfg.max_length, cfg.doc_stride, cfg.max_question_len,
            cfg.skip_bad_rows, f"{cfg.data} (validation)")
        self.splits.skipped += long_train + long_validation
        split = self.splits.train
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

"""The options question-answering adds to the stage configs, and their checks.

``OPTIONS`` maps a config class of ``deploykit.config`` to the dataclass whose fields that config
gains. Options shared with other tasks (``--skip-bad-rows``, ``--fp32-score-atol``, the INT8 ladder's
``--int8-scheme`` & co.) are declared with the same types and defaults, so one flag serves them all.
Imports only the option helpers: ``deploykit.config`` imports this module while it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.options import opt, require
from deploykit.tasks.classification.options import INT8_SCHEMES
# The request/response load generator's options, as token classification declares them.
from deploykit.tasks.token_classification.options import BenchOnline, fp32_score_atol_option


@dataclass
class Data:
    question_column: str = opt("question", "question-answering: the column of questions (a SQuAD JSON file "
                               "needs no column options).")
    context_column: str = opt("context", "question-answering: the column of contexts the answers are found in.")
    answers_column: str = opt("answers", "question-answering: the column of answers as SQuAD's "
                              "{\"text\": [...], \"answer_start\": [...]} (or a list of {text, answer_start}); "
                              "see --answer-column for a text and a start column instead.")
    answer_column: str | None = opt(None, "question-answering: a column of answer texts (with "
                                    "--answer-start-column), instead of --answers-column.")
    answer_start_column: str | None = opt(None, "question-answering: the column of each answer's character "
                                          "start in its context (with --answer-column).")
    allow_no_answer: bool = opt(False, "question-answering: accept questions without an answer in their "
                                "context (SQuAD 2.0 style: an empty answers list, or an empty answer cell); "
                                "the model learns to point at [CLS] for them and serves an empty answer.")
    skip_bad_rows: bool = opt(False, "token-classification, question-answering: skip rows that cannot be used "
                              "(overlapping spans, a span outside the text or splitting a word, tags and tokens "
                              "of different lengths; an answer that is not the context's text at its start, an "
                              "empty question or context, ...) and record their count, instead of exit 2.")
    doc_stride: int = opt(32, "question-answering: tokens that consecutive windows of a context longer than "
                          "--max-length share (training, evaluation and the served default; the pipeline's "
                          "doc_stride).")

    max_question_len: int = opt(64, "question-answering: the longest question, in tokens (the pipeline's "
                                "max_question_len; training, evaluation, export and the service refuse a longer "
                                "one, or skip it with --skip-bad-rows).")

    def validate(self) -> None:
        require(self.doc_stride >= 0, "doc_stride", "must be >= 0 tokens")
        require(self.max_question_len >= 1, "max_question_len", "must be at least 1 token")


@dataclass
class HeldOut:
    question_column: str | None = opt(None, "question-answering: questions column (default: the checkpoint's).")
    context_column: str | None = opt(None, "question-answering: contexts column (default: the checkpoint's).")
    answers_column: str | None = opt(None, "question-answering: answers column (default: the checkpoint's).")


@dataclass
class Answers:
    """How answers are read from start/end scores (evaluation, export's manifest head, parity)."""

    max_answer_len: int = opt(15, "question-answering: the longest answer, in tokens (the pipeline's "
                              "max_answer_len).")
    max_question_len: int = opt(64, "question-answering: the longest question served, in tokens (the "
                                "pipeline's max_question_len; the service refuses a longer one).")
    align_to_words: bool = opt(True, "question-answering: extend answers to whole words of the model's "
                               "pre-tokenizer (the pipeline's align_to_words).")

    def validate(self) -> None:
        require(self.max_answer_len >= 1, "max_answer_len", "must be at least 1 token")
        require(self.max_question_len >= 1, "max_question_len", "must be at least 1 token")


@dataclass
class Parity:
    fp32_score_atol: float = fp32_score_atol_option()
    int8_min_answer_agreement: float = opt(0.99, "question-answering: smallest share of questions whose answer "
                                           "(text, start, end) an INT8 variant must reproduce.")
    int8_max_qa_f1_drop: float = opt(0.005, "question-answering: largest SQuAD-F1 loss (0.005 = half a point) "
                                     "allowed for INT8 variants against PyTorch.")

    def validate(self) -> None:
        require(self.fp32_score_atol > 0, "fp32_score_atol", "must be positive")
        require(0 <= self.int8_min_answer_agreement <= 1, "int8_min_answer_agreement", "must be in [0, 1]")
        require(0 <= self.int8_max_qa_f1_drop <= 1, "int8_max_qa_f1_drop", "must be in [0, 1]")


@dataclass
class Export(Answers):
    # Shared with text-classification (same types and defaults: one flag for both tasks).
    int8_scheme: str = opt("auto", "Static INT8 scheme.", choices=INT8_SCHEMES)
    int8_fallback: str = opt("auto", "Keep the worst-quantizing operators in float when needed.",
                             choices=("auto", "off"))
    int8_search_samples: int = opt(2000, "Validation rows the INT8 choice scores each candidate on.")
    int8_search_margin: float | None = opt(None, "Margin of the expected agreement above the gate.")
    calibration_samples: int = opt(512, "Training rows that calibrate static INT8.")
    reduce_range: str = opt("auto", "7-bit weights for INT8: auto, on, off.", choices=("auto", "on", "off"))


@dataclass
class Predict:
    question_column: str | None = opt(None, "question-answering: the column of questions (default: question).")
    context_column: str | None = opt(None, "question-answering: the column of contexts (default: context).")


@dataclass
class BenchOffline:
    # Shared with text-classification (same types and defaults).
    batch_sizes: str = opt("1,8,32,128", "Batch sizes for the data set's texts.")


OPTIONS = {"DataConfig": Data, "HeldOutConfig": HeldOut, "EvalConfig": Answers, "ParityConfig": Parity,
           "ExportConfig": Export, "PredictConfig": Predict, "BenchOfflineConfig": BenchOffline,
           "BenchOnlineConfig": BenchOnline}


def check(cfg: Any, stage: str) -> None:
    """The rules of a ``stage`` config that runs question-answering: a window (``--max-length`` tokens,
    three of them special for a question and a context) must hold more than ``--doc-stride`` tokens.

    Raises:
        ConfigError: Naming ``--doc-stride``.
    """
    if hasattr(cfg, "doc_stride") and hasattr(cfg, "max_length"):
        require(cfg.doc_stride < cfg.max_length - 3, "doc_stride",
                f"{cfg.doc_stride} must leave each window of --max-length {cfg.max_length} new tokens "
                f"(at most {cfg.max_length - 4})")

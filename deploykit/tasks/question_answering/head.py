"""The manifest head of a question-answering artifact: the two logits outputs and how answers are
served (the windows' stride, the longest answer, the longest question, word alignment, whether an
empty answer may win, and the tuned null threshold with the score space it lives in).

Standard library only (plus the manifest's typed reader): the torch-free serving side reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deploykit.errors import BadInputError
from deploykit.manifest import CONFIG, Fields
from deploykit.tasks.classification.head import Classification

# The head's own version: a reader refuses a newer one (fields it would not apply), so an answer is
# never served under rules it does not know.
HEAD_VERSION = 1
# The null threshold's score space: the pipeline's no-answer score (the smallest start[0]*end[0]
# probability over the windows) minus the best answer's score (its start*end probability, summed over
# windows that found the same text). A question gets no answer when that difference is above the
# threshold; the pipeline's own rule (handle_impossible_answer, ranked with the answers) is 0.
NULL_SCORE_SPACE = "null_minus_best_probability"
OUTPUTS = ("start_logits", "end_logits")


@dataclass(frozen=True)
class QuestionAnswering:
    """The fields of a ``question-answering`` artifact.

    Attributes:
        doc_stride: Tokens that consecutive windows of a long context share.
        max_answer_len: The longest answer, in tokens.
        max_question_len: The longest question served, in tokens (a longer one is refused).
        align_to_words: Answers start and end on the model's word boundaries (the pipeline's default).
        handle_impossible_answer: Whether the empty answer is ranked with the others (a model trained
            with unanswerable questions).
        null_threshold: The tuned no-answer threshold (in ``null_score_space``), or None.
        null_score_space: The space ``null_threshold`` lives in (``NULL_SCORE_SPACE``).
        outputs: The start and end logits outputs ([batch, tokens] each).
    """

    TASK: ClassVar[str] = "question-answering"
    INPUTS: ClassVar[tuple[str, ...]] = Classification.INPUTS

    doc_stride: int = 32
    max_answer_len: int = 15
    max_question_len: int = 64
    align_to_words: bool = True
    handle_impossible_answer: bool = False
    null_threshold: float | None = None
    null_score_space: str = NULL_SCORE_SPACE
    outputs: tuple[str, ...] = OUTPUTS

    # What the classifier's runtime reads of a head (a span model has no label list).
    labels: ClassVar[tuple[str, ...]] = ()

    @property
    def output(self) -> str:
        """The first output (the runtime's check that the graph answers it)."""
        return self.outputs[0]

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> QuestionAnswering:
        unknown = [name for name in inputs if name not in cls.INPUTS]
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            fields.fail("inputs", f"is {list(inputs)}; a {cls.TASK} graph takes input_ids and attention_mask, "
                                  "optionally token_type_ids")
        version = fields.integer("qa_head_version", 1)
        if version > HEAD_VERSION:
            fields.fail("qa_head_version", f"is {version}; this deploykit reads question-answering heads up to "
                                           f"version {HEAD_VERSION} (serve it with the deploykit that wrote it)")
        outputs = fields.strings("outputs", unique=True)
        if outputs != OUTPUTS:
            fields.fail("outputs", f"is {list(outputs)}; a {cls.TASK} graph answers {list(OUTPUTS)}")
        max_length = fields.get("max_length", int)
        stride = fields.integer("doc_stride", 0)
        if stride >= max_length - 3:
            fields.fail("doc_stride", f"is {stride}; it must leave a window of max_length {max_length} new tokens")
        answer_len = fields.integer("max_answer_len", 1)
        question_len = fields.integer("max_question_len", 1)
        align = fields.get("align_to_words", bool)
        impossible = fields.get("handle_impossible_answer", bool)
        threshold = (None if fields.doc.get("null_threshold") is None
                     else fields.get("null_threshold", (int, float)))
        space = fields.get("null_score_space", str)
        if space != NULL_SCORE_SPACE:
            fields.fail("null_score_space", f"is {space!r}; this deploykit applies thresholds in "
                                            f"{NULL_SCORE_SPACE!r}")
        return cls(stride, answer_len, question_len, align, impossible,
                   None if threshold is None else float(threshold), space, outputs)

    def to_json(self) -> dict[str, Any]:
        return {"qa_head_version": HEAD_VERSION, "outputs": list(self.outputs), "doc_stride": self.doc_stride,
                "max_answer_len": self.max_answer_len, "max_question_len": self.max_question_len,
                "align_to_words": self.align_to_words, "handle_impossible_answer": self.handle_impossible_answer,
                "null_threshold": self.null_threshold, "null_score_space": self.null_score_space}

    def check_config(self, config: Any, where: Path, max_length: int) -> None:
        """``max_length`` against the model's ``max_position_embeddings`` (``config.json``).

        Raises:
            BadInputError: The windows are longer than the model takes.
        """
        if not isinstance(config, dict):
            raise BadInputError(f"{where}: {CONFIG} is not a JSON object; re-export the artifact")
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and max_length > positions:
            raise BadInputError(f"{where}: 'max_length' {max_length} is more than the model's {positions} "
                                f"positions ({CONFIG} max_position_embeddings); re-export with a smaller --max-length")


Head = QuestionAnswering

"""question-answering's export hooks: the variants, the INT8 choice, the pipeline reference and parity.

The shared pipeline (``deploykit.export.pipeline``) calls ``Export``: it writes the plain fp32 graph
(optimum's question-answering exporter: start and end logits, eager attention) and ``tokenizer.json``,
the fused one (onnxruntime's transformer optimizer), and ``model.int8.onnx`` by ``--quantize``: static QDQ
INT8 chosen by text-classification's measured ladder (``int8_schemes.choose``, with its accuracy-aware
float fallback) judged on answers (``int8.Scorer``), or dynamic INT8. Parity (``parity``) runs each
variant through the serving runtime against ``transformers.pipeline("question-answering")`` on the
checkpoint. The manifest's head records the windows' stride (the checkpoint's ``--doc-stride``), the
answer rules (``--max-answer-len``, ``--max-question-len``, ``--align-to-words``), whether the empty
answer is ranked (the checkpoint was trained with ``--allow-no-answer``) and the null threshold tuned on
the validation split, in its score space.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from deploykit import checkpoint as ckpt
from deploykit.config import ParityConfig
from deploykit.errors import BadInputError
from deploykit.export import onnx_export, quantize
from deploykit.export.parity import Column, ParityResult
from deploykit.manifest import Manifest
from deploykit.tasks.classification import int8_fallback, int8_schemes
from deploykit.tasks.classification.export import tolerated
from deploykit.tasks.question_answering import answers, data, int8, parity, scoring
from deploykit.tasks.question_answering.evaluate import validation_threshold
from deploykit.tasks.question_answering.head import QuestionAnswering
from deploykit.tasks.question_answering.runtime import Runtime
from deploykit.tasks.question_answering.train import encode, fit_questions
from deploykit.tasks.token_classification.export import WindowedExport, max_length

log = logging.getLogger(__name__)

OPTIMUM_TASK = "question-answering"  # optimum's task: the encoder with its span head (start and end logits)


class Export(WindowedExport):
    """The export hooks of question-answering (see ``deploykit.export.pipeline.Export``).

    Args:
        cfg: The stage's options (``ExportConfig`` for export, ``VerifyConfig`` for verify).
        checkpoint: The validated checkpoint.

    Raises:
        BadInputError: optimum-onnx cannot export the architecture for question answering.
    """

    OPTIMUM_TASK = OPTIMUM_TASK
    RUNTIME = Runtime
    UNITS = "questions"

    def __init__(self, cfg: ParityConfig, checkpoint: Path) -> None:
        self.cfg, self.checkpoint = cfg, checkpoint
        onnx_export.check_supported(checkpoint, OPTIMUM_TASK)
        self.train_cfg = ckpt.train_config(checkpoint)
        self.dcfg = parity.data_config(cfg, self.train_cfg)
        self.manifest: Manifest | None = None
        self.export_head: QuestionAnswering | None = None  # the head export writes (its threshold tuned once)

    def check_artifact(self, manifest: Manifest) -> None:
        """verify: the artifact's own head (its rules) is what parity checks."""
        self.manifest = manifest

    def load(self) -> None:
        """The eager model and tokenizer, then the held-out questions."""
        self.model, self.tokenizer = onnx_export.load_eager(self.checkpoint)
        self.max_length = max_length(self.train_cfg, self.model.config)
        rows = parity.load_held_out(self.cfg, self.dcfg)
        # The questions the artifact's head takes (verify: the manifest's; export: the one it writes).
        head = self.manifest.head_as(QuestionAnswering) if self.manifest is not None else self.head()
        self.rows = replace(rows, questions=self.fit(rows.questions, head, rows.split))

    def fit(self, questions: data.Questions, head: QuestionAnswering, split: str) -> data.Questions:
        """The questions of ``split`` that ``head`` takes (a longer one: exit 2, or skipped with --skip-bad-rows)."""
        fit, _ = fit_questions(self.tokenizer, questions, self.max_length, head.doc_stride, head.max_question_len,
                               self.dcfg.skip_bad_rows, f"{self.dcfg.data} ({split})")
        return fit

    def head(self) -> QuestionAnswering:
        """The manifest head: the stride, the answer rules, the empty answer and the null threshold,
        tuned on the validation split with these very rules (``null_threshold``)."""
        if self.export_head is None:
            cfg, dcfg = self.cfg, self.dcfg
            rules = QuestionAnswering(min(dcfg.doc_stride, self.max_length - 4), cfg.max_answer_len,
                                      cfg.max_question_len, cfg.align_to_words, bool(dcfg.allow_no_answer))
            self.export_head = replace(rules, null_threshold=self.null_threshold(rules) if dcfg.allow_no_answer else None)
        return self.export_head

    def null_threshold(self, head: QuestionAnswering) -> float | None:
        """The best null threshold of the training's validation split, its answers read with ``head``'s rules
        (``--max-answer-len`` and ``--no-align-to-words`` move the best answer's probability, the score the
        threshold is compared with, so training's threshold, found with the default rules, is not reused);
        None when the split has no unanswerable question. A validation split that cannot be read (the
        training data moved) falls back, with a warning, to training's threshold."""
        try:
            split, _ = data.held_out(self.train_cfg, "validation")
        except BadInputError as exc:
            log.warning("the null threshold is training's (found with the default answer rules): the validation "
                        "split cannot be read (%s)", exc)
            return validation_threshold(self.checkpoint)
        split = self.fit(split, head, "validation")
        rows = encode(self.tokenizer, split, self.max_length, head.doc_stride)
        starts, ends = scoring.window_logits(self.model, self.tokenizer, rows, batch_size=max(self.cfg.batch_size_list),
                                             progress=True)
        rules = answers.Rules(max_answer_len=head.max_answer_len, align_to_words=head.align_to_words)
        decoded = scoring.decode_all(split, rows, starts, ends, rules, self.tokenizer.cls_token_id)
        threshold = scoring.qa_metrics(split, decoded).get("best_f1_threshold")
        return None if threshold is None else float(threshold)

    def stride_of(self, head: QuestionAnswering) -> int:
        return head.doc_stride

    def _calibration(self, src: Path, tokenizer_file: Path, head: QuestionAnswering) -> int8_schemes.Calibration:
        """The first ``--calibration-samples`` training questions (never held-out ones) that ``head``
        takes, windowed as served, as unpadded calibration feeds."""
        splits = data.load_splits(replace(self.dcfg, max_train_samples=None))
        train = self.fit(splits.train, head, "train").take(self.cfg.calibration_samples)
        if not len(train):
            raise BadInputError(f"the training split of {self.dcfg.data} has no rows to calibrate INT8 on")
        runtime = Runtime.of_graph(src, tokenizer_file, self.max_length, head=head)
        pairs = list(zip(train.questions, train.contexts))
        return int8_schemes.Calibration(quantize.calibration_feeds(int8.PairFeeds(runtime), pairs),
                                        parity.source_name(self.dcfg), "train", [f"{q}\n{c}" for q, c in pairs],
                                        self.dcfg.context_column)

    def _scorer(self, reference: Path, tokenizer_file: Path, head: QuestionAnswering) -> int8.Scorer:
        """The INT8 choice's judge on the validation questions (else, with a warning, the parity rows)."""
        cfg = self.cfg
        try:
            rows, _ = data.held_out(self.dcfg, "validation")
            search = int8.SearchRows(self.fit(rows, head, "validation").take(cfg.int8_search_samples), "validation")
        except BadInputError as exc:
            log.warning("the int8 search scores the %s rows themselves (%s); the INT8 gate on them is then no "
                        "independent check", self.rows.split, exc)
            search = int8.SearchRows(self.rows.questions.take(cfg.int8_search_samples), self.rows.split)
        if len(search.questions) < 200:
            log.warning("the int8 choice has only %d %s questions: agreement moves in steps of %.3f",
                        len(search.questions), search.split, 1 / max(len(search.questions), 1))
        margin = cfg.int8_search_margin
        if margin is None:  # the gate's own count on the parity rows wanders this far around the truth
            margin = int8_fallback.sampling_slack(cfg.int8_min_answer_agreement, len(self.rows.questions))
        return int8.Scorer(reference, tokenizer_file, search, self.max_length, head, cfg.batch_size_list,
                           cfg.int8_min_answer_agreement, cfg.int8_max_qa_f1_drop / 2, margin=margin)

    def reference(self, head: QuestionAnswering, max_length: int) -> parity.Reference:
        """The transformers pipeline on the checkpoint, with the artifact's rules."""
        return parity.reference(self.model, self.tokenizer, self.rows, head, max_length)

    def check(self, folder: Path, manifest: Manifest, variant: str, reference: parity.Reference) -> ParityResult:
        return parity.check_variant(folder, manifest, variant, self.rows, reference, self.cfg)

    def columns(self, reference: parity.Reference) -> list[Column]:
        return parity.columns(reference)

    def tolerated(self, variant: str, manifest: Manifest) -> str | None:
        return tolerated(self.cfg.quantize, variant, manifest)

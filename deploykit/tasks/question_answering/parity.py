"""question-answering's parity: every variant, run by the serving runtime, against
``transformers.pipeline("question-answering", model=CHECKPOINT)`` on what users see: the answers.

The pipeline is called on each held-out question with the artifact's rules: ``doc_stride``,
``max_answer_len``, ``max_seq_len`` (the manifest's ``max_length``), ``max_question_len``,
``align_to_words``, ``handle_impossible_answer`` and ``top_k`` (``PARITY_TOP_K``: the ranked list, not
only the best answer). For unanswerable questions parity uses the pipeline's own null rule (the empty
answer, scored by the smallest start[CLS]*end[CLS] over the windows, ranked with the others); the tuned
null threshold is a serving rule, applied after.

A float variant (fp32, fused) passes when every question gets the same answers (text, start, end) in
the same order, with scores within ``--fp32-score-atol``; an INT8 variant when at least
``--int8-min-answer-agreement`` of the questions keep their best answer and SQuAD F1 drops by at most
``--int8-max-qa-f1-drop``. Every variant's batch independence is measured: each window alone against
the same window in mixed batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import data as shared_data
from deploykit.config import DataConfig, ParityConfig
from deploykit.errors import BadInputError
from deploykit.export.parity import Column, ParityResult, batches, fmt
from deploykit.manifest import Manifest, ParityRows
from deploykit.tasks.question_answering import data, squad
from deploykit.tasks.question_answering.head import QuestionAnswering
from deploykit.tasks.question_answering.runtime import Runtime
from deploykit.tasks.token_classification import parity as windows_parity

log = logging.getLogger(__name__)

INT8_PRECISIONS = ("int8",)
PARITY_TOP_K = 3
COLUMNS = ("question_column", "context_column", "answers_column")


@dataclass
class HeldOut:
    """The questions parity runs on, with their gold answers."""

    questions: data.Questions
    source: str
    split: str
    data_sha256: str
    columns: dict[str, str] = field(default_factory=dict)

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """What the manifest records of these rows (``evaluation``), so verify re-checks them."""
        q = self.questions
        digest = hashlib.sha256(json.dumps([q.questions, q.contexts, q.answers], ensure_ascii=False).encode()).hexdigest()
        return ParityRows(source=self.source, split=self.split, n=len(q), batch_sizes=tuple(batch_sizes),
                          columns=self.columns, sha256=digest)


def data_config(cfg: ParityConfig, train_cfg: Any) -> DataConfig:
    """The checkpoint's data options with --data and the column options applied on top."""
    return shared_data.rebuild_config(train_cfg, split=cfg.split, **shared_data.held_out_options(cfg))


def source_name(dcfg: DataConfig) -> str:
    """A file by its absolute path, so that verify finds it from any folder."""
    return str(Path(dcfg.data).resolve()) if Path(dcfg.data).exists() else dcfg.data


def load_held_out(cfg: ParityConfig, dcfg: DataConfig) -> HeldOut:
    """Rebuild the checkpoint's split (same seed and ratios), or read ``--data --split all``.

    Raises:
        BadInputError: Bad data source, or no rows.
    """
    rows, sha = data.held_out(dcfg, cfg.split)
    rows = rows.take(cfg.max_eval_samples)
    if not len(rows):
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no rows to check parity on")
    return HeldOut(rows, source_name(dcfg), cfg.split, sha, {c: getattr(dcfg, c) for c in COLUMNS})


# --- the reference -----------------------------------------------------------------------------

@dataclass
class Reference:
    """The pipeline's ranked answers of every held-out question and its SQuAD metrics."""

    found: list[list[dict[str, Any]]]
    metrics: dict[str, float]


def pipeline_kwargs(head: QuestionAnswering, max_length: int, top_k: int = PARITY_TOP_K) -> dict[str, Any]:
    """The pipeline's parameters for an artifact's head (what the runtime applies)."""
    return {"doc_stride": head.doc_stride, "max_answer_len": head.max_answer_len, "max_seq_len": max_length,
            "max_question_len": head.max_question_len, "align_to_words": head.align_to_words, "top_k": top_k,
            "handle_impossible_answer": head.handle_impossible_answer}


def pipeline_answers(pipe: Any, questions: Sequence[str], contexts: Sequence[str], kwargs: dict[str, Any],
                     desc: str = "pipeline") -> list[list[dict[str, Any]]]:
    """The pipeline's ranked answers of each question (always a list)."""
    from deploykit.progress import bar as progress_bar

    out = []
    for question, context in progress_bar(list(zip(questions, contexts)), desc=desc, unit="question", leave=False):
        found = pipe(question=question, context=context, **kwargs)
        found = found if isinstance(found, list) else [found]
        out.append([{"answer": a["answer"], "score": float(a["score"]), "start": int(a["start"]), "end": int(a["end"])}
                    for a in found])
    return out


def headline(held: data.Questions, found: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
    """SQuAD EM and F1 of each question's best answer."""
    metrics = squad.metrics([held.texts(i) for i in range(len(held))], [f[0]["answer"] if f else "" for f in found])
    return {k: metrics[k] for k in ("exact_match", "f1")}


def reference(model: Any, tokenizer: Any, held: HeldOut, head: QuestionAnswering, max_length: int) -> Reference:
    """The pipeline on the held-out questions, with the artifact's rules."""
    from transformers import pipeline

    pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    q = held.questions
    found = pipeline_answers(pipe, q.questions, q.contexts, pipeline_kwargs(head, max_length), "pipeline reference")
    return Reference(found, headline(q, found))


# --- comparing ---------------------------------------------------------------------------------

def spans(found: Sequence[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(a["answer"], a["start"], a["end"]) for a in found]


def compare(got: Sequence[Sequence[dict[str, Any]]], want: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
    """``best_agreement`` (questions with the same best answer), ``list_agreement`` (the same ranked
    answers) and ``max_score_diff`` (over the questions whose lists agree)."""
    best = same = 0
    worst = 0.0
    for g, w in zip(got, want):
        best += spans(g[:1]) == spans(w[:1])
        if spans(g) == spans(w):
            same += 1
            worst = max([worst] + [abs(a["score"] - b["score"]) for a, b in zip(g, w)])
    n = max(len(want), 1)
    return {"best_agreement": best / n, "list_agreement": same / n, "max_score_diff": worst}


def runtime_logits(runtime: Runtime, held: data.Questions, sizes: Sequence[int], desc: str = "onnx",
                   progress: bool = True) -> tuple[list, np.ndarray]:
    """(windows, their logits) of the questions through the serving runtime, batches cycling through ``sizes``."""
    from deploykit.progress import bar as progress_bar

    rows = runtime.tokenize(held.questions, held.contexts)
    quiet = {} if progress else {"disable": True}
    out = np.empty(len(rows), dtype=object)
    for part in progress_bar(batches(len(rows), sizes), desc=desc, unit="batch", leave=False, **quiet):
        out[part] = runtime.run(rows[part])
    return rows, out


def batch_independence(runtime: Runtime, held: data.Questions, batched: np.ndarray | None = None) -> dict[str, Any]:
    """How far a window's start/end logits move with its batch mates (token classification's measure,
    ``token_classification.parity.batch_independence``, on the questions' pair windows)."""
    return windows_parity.batch_independence(runtime, [], batched, rows=runtime.tokenize(held.questions, held.contexts))


def bounds_for(precision: str, cfg: ParityConfig) -> dict[str, float]:
    """The tolerances of a precision (fp32 and fused graphs vs INT8)."""
    if precision in INT8_PRECISIONS:
        return {"min_answer_agreement": cfg.int8_min_answer_agreement, "max_f1_drop": cfg.int8_max_qa_f1_drop}
    return {"min_list_agreement": 1.0, "max_score_diff": cfg.fp32_score_atol}


def check_variant(folder: Path, manifest: Manifest, name: str, held: HeldOut, ref: Reference,
                  cfg: ParityConfig) -> ParityResult:
    """Compare one variant, run by the serving runtime, with the pipeline: the graph's interface against
    the manifest, then the ranked answers of every question, then SQuAD EM/F1.

    Returns:
        The result; ``failures`` lists every missed bound (empty when it passed).
    """
    precision = manifest.variants[name].precision
    result = ParityResult(name, precision, {"best_agreement": 0.0, "max_score_diff": float("nan")},
                          bounds=bounds_for(precision, cfg))
    try:
        runtime = Runtime.of_variant(folder, manifest, name)
    except BadInputError as exc:
        result.fail("interface", str(exc), "the manifest's inputs and outputs")
        return result
    q = held.questions
    rows, logits = runtime_logits(runtime, q, cfg.batch_size_list, desc=name)
    found = runtime.answers(q.contexts, rows, logits, PARITY_TOP_K, threshold=False)
    numbers = compare(found, ref.found)
    result.numbers.update(numbers)
    result.metrics = headline(q, found)
    result.batch_independence = batch_independence(runtime, q, logits)
    b = result.bounds
    if "max_score_diff" in b:
        if numbers["list_agreement"] < b["min_list_agreement"]:
            result.fail("list_agreement", numbers["list_agreement"], b["min_list_agreement"],
                        b["min_list_agreement"] - numbers["list_agreement"])
        if not numbers["max_score_diff"] <= b["max_score_diff"]:
            result.fail("max_score_diff", numbers["max_score_diff"], b["max_score_diff"],
                        numbers["max_score_diff"] - b["max_score_diff"])
    else:
        if numbers["best_agreement"] < b["min_answer_agreement"]:
            result.fail("answer_agreement", numbers["best_agreement"], b["min_answer_agreement"],
                        b["min_answer_agreement"] - numbers["best_agreement"])
        drop = ref.metrics["f1"] - result.metrics["f1"]
        if drop > b["max_f1_drop"]:
            result.fail("f1_drop", drop, b["max_f1_drop"], drop - b["max_f1_drop"])
    return result


def columns(ref: Reference) -> list[Column]:
    """The parity table's columns: answer agreement (best, ranked lists), the largest score difference,
    SQuAD EM/F1 and batch dependence."""
    def number(key: str):
        return lambda r: fmt(r.numbers.get(key))

    def metric(key: str):
        return lambda r: fmt(r.metrics.get(key))

    return [Column("best answer agreement", number("best_agreement")),
            Column(f"top-{PARITY_TOP_K} agreement", number("list_agreement")),
            Column("max_score_diff", number("max_score_diff")),
            Column("f1", metric("f1"), f"{ref.metrics['f1']:.4f}"),
            Column("exact_match", metric("exact_match"), f"{ref.metrics['exact_match']:.4f}"),
            Column("batch_dependence", lambda r: fmt(r.batch_independence.get("max_abs_diff")))]

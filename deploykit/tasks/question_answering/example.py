"""A tiny question-answering example, built here in seconds (nothing is downloaded): a random 2-layer BERT
(the classifier example's; training gives it a span head) with the packaged MiniLM's tokenizer, and
questions of the generated corpus (``corpus``) over a few built-in sentences, some unanswerable.

The task contract's smallest instance: the contract test (``tests/test_task_contract.py``) runs every
registered task's example through train, evaluate, export, verify, predict and serve. Needs the
``train`` extra (torch, transformers, the packaged MiniLM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.tasks.classification import example as classification
from deploykit.tasks.question_answering import corpus

# Options of the example's stages beyond --data, --model and --out: windows of 48 tokens sharing 8.
TRAIN: dict[str, Any] = {"task": "question-answering", "allow_no_answer": True, "max_steps": 4, "batch_size": 16,
                         "max_length": 48, "doc_stride": 8, "eval_every": 4}
# Tiny random models have near-tied scores: INT8 may miss its gate, which the contract allows.
EXPORT: dict[str, Any] = {"quantize": "static", "int8_fallback": "off", "allow_parity_failure": True,
                          "max_eval_samples": 24}
INPUTS = [{"question": "who won the chess tournament?", "context": "The chess tournament was won by Ann Lee."},
          {"question": "where was the bake sale held?", "context": "what a long day. The bake sale was held in Oslo."},
          {"question": "how many people came?", "context": "it is raining again"}]
PREDICTION_KEYS = ("answer", "score", "start", "end")


def data(path: Path) -> Path:
    """240 generated questions (JSONL: question, context, answers) beside ``path``."""
    rows = corpus.generate(240, seed=0, sentences=list(corpus.FALLBACK_SENTENCES), long_sentences=(4, 8))
    return corpus.write_jsonl(rows, Path(path).with_suffix(".jsonl"))


def pretrained(folder: Path) -> Path:
    """The classifier example's tiny random BERT and the packaged MiniLM's tokenizer (training replaces
    its head with a span head)."""
    return classification.pretrained(folder)


def request(inputs: list[dict[str, str]]) -> tuple[str, Any]:
    """A request to the service: its route and JSON body (a list of questions)."""
    return "/answer", list(inputs)


def answers(response: Any) -> list[dict[str, Any]]:
    """The per-question answers of the service's answer to ``request``."""
    return list(response["answers"])

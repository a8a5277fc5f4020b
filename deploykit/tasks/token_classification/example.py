"""A tiny token-classification example, built here in seconds (nothing is downloaded): a random 2-layer
BERT (the classifier example's) with the packaged MiniLM's tokenizer, and span-level rows of the generated
corpus (``corpus``) mixed into a few built-in sentences.

The task contract's smallest instance: the contract test (``tests/test_task_contract.py``) runs
every registered task's example through train, evaluate, export, verify, predict and serve.
Needs the ``train`` extra (torch, transformers, the packaged MiniLM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.tasks.classification import example as classification
from deploykit.tasks.token_classification import corpus, tags

LABELS = tags.labels(corpus.TYPES)
# Options of the example's stages beyond --data, --model and --out: windows of 32 tokens sharing 8.
TRAIN: dict[str, Any] = {"task": "token-classification", "entities_column": "entities", "max_steps": 4,
                         "batch_size": 16, "max_length": 32, "stride": 8, "eval_every": 4}
# Tiny random models have near-tied scores: INT8 may miss its gate, which the contract allows.
EXPORT: dict[str, Any] = {"quantize": "static", "int8_fallback": "off", "allow_parity_failure": True,
                          "max_eval_samples": 24, "long_texts": 2}
INPUTS = ["met John Smith in Paris on March 3", "Acme Corp hired Mary Jones last week",
          "a text without any entity at all"]
PREDICTION_KEYS = ("entities",)


def data(path: Path) -> Path:
    """240 generated span-level rows (JSONL: text, entities) beside ``path``."""
    rows = corpus.generate(240, seed=0, sentences=list(corpus.FALLBACK_SENTENCES))
    return corpus.write_jsonl(rows, Path(path).with_suffix(".jsonl"))


def pretrained(folder: Path, labels: list[str] = LABELS) -> Path:
    """The classifier example's tiny random BERT and the packaged MiniLM's tokenizer: its encoder
    (and a head of the labels' width, which training replaces) loads as a token classifier."""
    return classification.pretrained(folder, labels)


def request(texts: list[str]) -> tuple[str, dict[str, Any]]:
    """A request to the service: its route and JSON body."""
    return "/ner", {"texts": texts}


def answers(response: Any) -> list[list[dict[str, Any]]]:
    """The per-text entity lists of the service's answer to ``request``."""
    return list(response["entities"])

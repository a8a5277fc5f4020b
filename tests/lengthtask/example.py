"""A tiny text-length example: the classification example's tiny BERT with bucket labels, and texts
of 2 to 12 words."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from deploykit.tasks.classification import example as classification
from lengthtask.data import buckets

TRAIN: dict[str, Any] = {"task": "text-length", "max_steps": 4, "batch_size": 16, "max_length": 32, "eval_every": 4}
# Its INT8 calibration would need labelled training rows of the classifier's kind: export fp32 and fused only.
EXPORT: dict[str, Any] = {"quantize": "none", "max_eval_samples": 24}
INPUTS = ["short one", "a text of exactly six words", "this one is a rather long text of more than eight words"]
PREDICTION_KEYS = ("bucket", "score", "words")


def data(path: Path) -> Path:
    rng = random.Random(0)
    words = ["road", "city", "sun", "tree", "we", "saw", "it", "today", "car", "blue", "quiet", "night"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([" ".join(rng.choices(words, k=2 + i % 11))] for i in range(240))
    return Path(path)


def pretrained(folder: Path) -> Path:
    return classification.pretrained(folder, buckets([4, 8]))


def request(texts: list[str]) -> tuple[str, dict[str, Any]]:
    return "/bucket", {"texts": texts}


def answers(response: Any) -> list[dict[str, Any]]:
    return list(response)

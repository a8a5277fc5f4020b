"""SQuAD exact match and F1, written out with the official evaluation script's answer normalisation
(lower case, no punctuation, no articles a/an/the, single spaces): the ``evaluate`` package fetches its
metric scripts from the Hugging Face Hub, which fails offline.

A question's score is its best over the gold answers; a question without gold answers (SQuAD 2.0's
unanswerable) scores 1 only for the empty prediction. With unanswerable questions, ``metrics`` also
reports HasAns/NoAns EM and F1 and, given each question's no-answer score, the best null threshold:
the one that maximises F1 when every question whose no-answer score is above it answers nothing (the
official v2.0 script's ``find_best_thresh``). Standard library only.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's ``normalize_answer``: lower case, remove punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(gold: str, predicted: str) -> float:
    return float(normalize(gold) == normalize(predicted))


def f1(gold: str, predicted: str) -> float:
    """Token-overlap F1 of two answers (both empty: 1; one empty: 0)."""
    gold_tokens, predicted_tokens = normalize(gold).split(), normalize(predicted).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[Sequence[str]], predictions: Sequence[str]) -> tuple[list[float], list[float]]:
    """(exact match, F1) of each question: the best over its gold answers ([""] when it has none)."""
    em, f = [], []
    for gold, predicted in zip(golds, predictions):
        options = [g for g in gold if normalize(g)] or [""]
        em.append(max(exact(g, predicted) for g in options))
        f.append(max(f1(g, predicted) for g in options))
    return em, f


def best_threshold(scores: Sequence[float], null_scores: Sequence[float], answerable: Sequence[bool]) -> tuple[float, float]:
    """The official v2.0 ``find_best_thresh``: (the best F1 or EM, its threshold).

    Args:
        scores: Each question's score (F1 or EM) when it is answered as predicted.
        null_scores: Each question's no-answer score (``head.NULL_SCORE_SPACE``): above the threshold it
            answers nothing.
        answerable: Whether each question has a gold answer.
    """
    # Answering nothing everywhere (a threshold below every no-answer score) scores the unanswerable
    # questions only; then raise the threshold question by question, lowest no-answer score first,
    # answering each in turn (an unanswerable one loses its point unless its prediction is empty).
    current = best = float(sum(1 for a in answerable if not a))
    threshold = min(null_scores, default=0.0) - 1.0
    for i in sorted(range(len(scores)), key=lambda k: null_scores[k]):
        current += scores[i] if answerable[i] else (scores[i] - 1.0)
        if current > best:
            best, threshold = current, null_scores[i]
    return best / max(len(scores), 1), float(threshold)


def metrics(golds: Sequence[Sequence[str]], predictions: Sequence[str],
            null_scores: Sequence[float] | None = None) -> dict[str, Any]:
    """EM and F1 (fractions), with HasAns/NoAns parts and the best null threshold when there are
    unanswerable questions.

    Args:
        golds: Each question's gold answer texts (empty: unanswerable).
        predictions: Each question's predicted text ("" for no answer).
        null_scores: Each question's no-answer score (for the best threshold), with the prediction
            being its best non-empty answer.

    Returns:
        ``exact_match``, ``f1``, ``n``; ``has_ans_*``/``no_ans_*`` (``exact_match``, ``f1``, ``n``) when
        some question is unanswerable; ``best_f1``, ``best_f1_threshold``, ``best_exact``,
        ``best_exact_threshold`` when ``null_scores`` are given too.
    """
    em, f = question_scores(golds, predictions)
    n = len(predictions)
    out: dict[str, Any] = {"exact_match": sum(em) / max(n, 1), "f1": sum(f) / max(n, 1), "n": n}
    # HasAns/NoAns by the raw gold list, as the official v2.0 script (``make_qid_to_has_ans``): a gold
    # answer that normalises to nothing (".", "the") still makes its question answerable.
    has = [bool(gold) for gold in golds]
    if not all(has):
        for name, keep in (("has_ans", True), ("no_ans", False)):
            index = [i for i in range(n) if has[i] == keep]
            out[f"{name}_exact_match"] = sum(em[i] for i in index) / max(len(index), 1)
            out[f"{name}_f1"] = sum(f[i] for i in index) / max(len(index), 1)
            out[f"{name}_n"] = len(index)
        if null_scores is not None:
            out["best_f1"], out["best_f1_threshold"] = best_threshold(f, null_scores, has)
            out["best_exact"], out["best_exact_threshold"] = best_threshold(em, null_scores, has)
    return out

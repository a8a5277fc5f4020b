"""Answers from start/end logits: transformers' question-answering pipeline's search, written out so that
the torch-free runtime, training's validation and evaluation read answers exactly as the pipeline does.

Per window (``transformers.pipelines.question_answering.select_starts_ends`` and ``decode_spans``):
question, special and padding tokens are masked (the [CLS] token stays: it is where a model points for
"no answer"), start and end logits go through a softmax over the window, the no-answer score is
start[CLS]*end[CLS], then [CLS] is zeroed and the n best (start <= end, at most ``max_answer_len``
tokens) spans by start*end probability are kept. Across windows: a span becomes character offsets
into the context (with ``align_to_words``, widened to the whole words of the model's pre-tokenizer
that its first and last tokens belong to, within the window), answers with the same text (ignoring
case) are merged by adding their scores, and the empty answer - with the smallest no-answer score
over the windows - is ranked with them when ``handle_impossible_answer`` is set.

``Decoded.null_minus_best`` is the quantity the tuned null threshold is compared with
(``head.NULL_SCORE_SPACE``). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploykit.tasks.windows import Window

CONTEXT = 1  # the context is the pair's second sequence (right-padding tokenizers put the question first)
NO_ANSWER = {"answer": "", "start": 0, "end": 0}
PIPELINE_NULL = 1000000.0  # the pipeline's initial "large and positive" no-answer score


@dataclass
class Rules:
    """How answers are read (the pipeline's parameters of the same names)."""

    top_k: int = 1
    max_answer_len: int = 15
    align_to_words: bool = True
    handle_impossible_answer: bool = False


@dataclass
class Decoded:
    """One question's answers: the pipeline's ranked dicts (``answer``, ``score``, ``start``, ``end``),
    the no-answer score and the best non-empty answer's score (0 when there is none)."""

    answers: list[dict[str, Any]]
    null_score: float
    best_score: float

    @property
    def null_minus_best(self) -> float:
        """The no-answer score minus the best answer's: what the null threshold is compared with."""
        return self.null_score - self.best_score


def question_limit(max_question_len: int, max_length: int, stride: int, specials: int) -> int:
    """The most question tokens a model takes (training, evaluation, export and serving alike): the head's
    ``max_question_len``, within what a window of ``max_length`` leaves beside its ``specials`` special
    tokens, the ``stride`` shared tokens and one new context token."""
    return min(max_question_len, max_length - specials - stride - 1)


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int,
                 desired: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``topk`` best spans of one window ([1, tokens] start and end probabilities), as the
    pipeline's ``decode_spans`` (the same numpy calls, so ties break the same way)."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    allowed = desired.nonzero()
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def window_probabilities(window: Window, start_logits: np.ndarray, end_logits: np.ndarray,
                         cls_id: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end) probabilities [1, tokens] of one window over its context tokens and [CLS], and the
    mask of tokens an answer may use (the pipeline's ``select_starts_ends`` before its search)."""
    p_mask = [int(s != CONTEXT) for s in window.sequences]
    if cls_id is not None:
        for i, token in enumerate(window.ids):
            if token == cls_id:
                p_mask[i] = 0
    desired = np.abs(np.array([p_mask]) - 1)
    masked = desired == 0
    start = np.where(masked, -10000.0, np.asarray(start_logits, dtype=np.float32).reshape(1, -1))
    end = np.where(masked, -10000.0, np.asarray(end_logits, dtype=np.float32).reshape(1, -1))
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    return start, end, desired


def char_span(window: Window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """The context characters of tokens ``s``..``e`` of a window (the pipeline's ``get_indices``): with
    ``align_to_words``, from the start of the first token's word to the end of the last token's word
    (a word's tokens within this window); a token of no word keeps its own offsets."""
    if align_to_words and window.words[s] is not None and window.words[e] is not None:
        def word_chars(word: int) -> tuple[int, int]:
            tokens = [j for j, (w, q) in enumerate(zip(window.words, window.sequences)) if w == word and q == CONTEXT]
            return window.offsets[tokens[0]][0], window.offsets[tokens[-1]][1]

        return word_chars(window.words[s])[0], word_chars(window.words[e])[1]
    return window.offsets[s][0], window.offsets[e][1]


def decode(context: str, windows: Sequence[Window], start_logits: Sequence[np.ndarray],
           end_logits: Sequence[np.ndarray], rules: Rules, cls_id: int | None) -> Decoded:
    """One question's answers from its windows' logits (see the module docstring).

    Args:
        context: The context the windows were cut from.
        windows: The question's windows, in order.
        start_logits: Each window's start logits [tokens].
        end_logits: Each window's end logits [tokens].
        rules: top_k, max_answer_len, align_to_words, handle_impossible_answer.
        cls_id: The [CLS] token id (kept unmasked), or None.

    Returns:
        The ranked answers (at most ``top_k``) and the no-answer and best scores.
    """
    null_score = PIPELINE_NULL
    found: list[dict[str, Any]] = []
    pre_topk = rules.top_k * 2 + 10 if rules.align_to_words else rules.top_k
    for window, s_logits, e_logits in zip(windows, start_logits, end_logits):
        start, end, desired = window_probabilities(window, s_logits, e_logits, cls_id)
        null_score = min(null_score, (start[0, 0] * end[0, 0]).item())
        start[0, 0] = end[0, 0] = 0.0
        starts, ends, scores = decode_spans(start, end, pre_topk, rules.max_answer_len, desired)
        for s, e, score in zip(starts, ends, scores):
            first, last = char_span(window, int(s), int(e), rules.align_to_words)
            text = context[first:last]
            same = next((a for a in found if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                found.append({"score": score.item(), "start": first, "end": last, "answer": text})
    best = max((a["score"] for a in found), default=0.0)
    ranked = list(found)
    if rules.handle_impossible_answer:
        ranked.append({"score": null_score, **NO_ANSWER})
    ranked = sorted(ranked, key=lambda a: a["score"], reverse=True)[:rules.top_k]
    return Decoded(ranked, float(null_score), float(best))


def with_threshold(decoded: Decoded, threshold: float | None, top_k: int) -> list[dict[str, Any]]:
    """The served answers (at least one): with a tuned null threshold, the empty answer comes first when
    the no-answer score beats the best answer by more than the threshold (and is left out otherwise);
    without one, the pipeline's own ranking (``decoded.answers``)."""
    if threshold is None:  # never an empty list: a context without a single token answers nothing
        return decoded.answers or [{"score": decoded.null_score, **NO_ANSWER}]
    answers = [a for a in decoded.answers if a["answer"] or a["end"]]
    if decoded.null_minus_best > threshold or not answers:
        answers = [{"score": decoded.null_score, **NO_ANSWER}, *answers]
    return answers[:top_k]


def best_text(decoded: Decoded, threshold: float | None) -> str:
    """The single answer text a question is scored with ("" for no answer)."""
    answers = with_threshold(decoded, threshold, 1) if threshold is not None else decoded.answers[:1]
    return answers[0]["answer"] if answers else ""


def pair_windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], max_length: int,
                 stride: int) -> list[Window]:
    """The windows of (question, context) pairs: the question whole in each, the context cut into
    windows of ``max_length`` tokens sharing ``stride`` (a ``tokenizers.Tokenizer`` set up by
    ``windows.set_windows(..., pair=True)``; exactly the pipeline's chunks). ``Window.text`` is the
    pair's index."""
    from deploykit.tasks.windows import windows

    return windows(tokenizer.encode_batch(list(zip(questions, contexts))), max_length, stride)

"""Entities from token logits, torch-free: transformers' token-classification pipeline, written out.

``entities`` turns the logits of one text's windows into what
``transformers.pipeline("token-classification", aggregation_strategy=S, stride=K)`` answers for the
same text, field for field (``entity_group``, ``score``, ``word``, ``start``, ``end``; with
``none``, the per-token ``entity``, ``score``, ``index``, ``word``, ``start``, ``end``), so that
existing clients work and export can hold the served runtime to the pipeline span for span:

1. scores: a softmax per token (in float32, as the pipeline's numpy code does);
2. words: a token continues a word when the vocabulary spells it longer or shorter than the
   text it covers (WordPiece's ``##``), or, for tokenizers without a continuing-subword prefix,
   when no space stands on either side of its start; an unknown token starts a word;
3. aggregation: ``none``/``simple`` label each token by its best score; ``first``, ``average``
   and ``max`` label each word by its first token, its mean scores, or its most confident token;
4. grouping: adjacent tokens (words) of one entity type join unless the next one is ``B-``; an
   entity's score is its parts' mean; ``O`` is dropped;
5. windows: the entities of all windows of a long text, merged where they overlap
   (``deploykit.tasks.windows.merge_overlapping``: the longer wins, as in the pipeline).

Written by hand because the only implementation is the pipeline itself, which needs torch and a
transformers model; this module needs numpy and the windows' tokens and offsets. One difference
on purpose: ``word`` is the original text's slice ``text[start:end]``, not the tokenizer's
lower-cased, re-joined form (``"John O'Neil"``, not ``"john o ' neil"``). With ``none`` on a
text of several windows, ``index`` counts the text's tokens from its first window's [CLS] (the
pipeline's own ``index`` within one window), and a token that two windows share is reported
once, by the same merge rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploykit.tasks.token_classification.head import AGGREGATIONS, OUTSIDE, entity_type
from deploykit.tasks.windows import Window, merge_overlapping


@dataclass(frozen=True)
class WordRule:
    """How to tell a word's continuation tokens: the vocabulary's continuing-subword prefix (None:
    the pipeline's space heuristic) and the unknown token's id."""

    prefix: str | None
    unk_id: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> WordRule:
        """The rule of a ``tokenizers.Tokenizer`` (as the pipeline reads its fast tokenizer's model)."""
        model = tokenizer.model
        unk = getattr(model, "unk_token", None)
        return cls(getattr(model, "continuing_subword_prefix", None) or None,
                   tokenizer.token_to_id(unk) if unk else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Scores per token, computed as the pipeline computes them (float32 numpy)."""
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted = np.exp(logits - maxes)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _tokens(text: str, part: Window, rule: WordRule) -> list[tuple[int, int, int, bool]]:
    """``(index, start, end, is_subword)`` of each content token of a window."""
    out = []
    prefix = rule.prefix
    for idx, (special, (start, end), token, token_id) in enumerate(zip(part.special, part.offsets, part.tokens, part.ids)):
        if special:
            continue
        if token_id == rule.unk_id:
            subword = False
        elif prefix:
            subword = len(token) != end - start
        else:
            subword = start > 0 and " " not in text[start - 1:start + 1]
        out.append((idx, start, end, subword))
    return out


def _words(tokens: list[tuple[int, int, int, bool]]) -> list[list[int]]:
    """Positions (into ``tokens``) of each word: a token that is not a continuation starts one."""
    words: list[list[int]] = []
    for i, token in enumerate(tokens):
        if words and token[3]:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def _labelled(tokens: list[tuple[int, int, int, bool]], scores: np.ndarray, strategy: str,
              labels: Sequence[str]) -> list[tuple[str, float, int, int, int]]:
    """``(label, score, index, start, end)`` per token (``none``, ``simple``) or per word."""
    if strategy in ("none", "simple"):
        index = np.fromiter((t[0] for t in tokens), dtype=np.int64, count=len(tokens))
        rows = scores[index]
        best = rows.argmax(-1)
        top = rows[np.arange(len(index)), best]
        return [(labels[b], float(s), t[0], t[1], t[2]) for t, b, s in zip(tokens, best.tolist(), top.tolist())]
    out = []
    for word in _words(tokens):
        parts = scores[[tokens[i][0] for i in word]]
        if strategy == "first":
            chosen = parts[0]
        elif strategy == "max":
            chosen = parts[int(parts.max(axis=-1).argmax())]  # the first of equally confident tokens
        else:  # average
            chosen = np.nanmean(parts, axis=0)
        best = int(chosen.argmax())
        first, last = tokens[word[0]], tokens[word[-1]]
        out.append((labels[best], float(chosen[best]), first[0], first[1], last[2]))
    return out


def _tag(label: str) -> tuple[str, str]:
    """(B or I, type) as the pipeline reads a label (anything without B-/I- continues)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _grouped(labelled: list[tuple[str, float, int, int, int]], text: str) -> list[dict[str, Any]]:
    """Adjacent parts of one type as one entity (a ``B-`` part starts a new one), ``O`` dropped."""
    groups: list[list[tuple[str, float, int, int, int]]] = []
    for part in labelled:
        if groups:
            bi, kind = _tag(part[0])
            if kind == _tag(groups[-1][-1][0])[1] and bi != "B":
                groups[-1].append(part)
                continue
        groups.append([part])
    out = []
    for group in groups:
        kind = entity_type(group[0][0])
        if kind == OUTSIDE:
            continue
        start, end = group[0][3], group[-1][4]
        score = float(np.nanmean(np.array([p[1] for p in group], dtype=np.float32)))
        out.append({"entity_group": kind, "score": score, "word": text[start:end], "start": start, "end": end})
    return out


def window_entities(text: str, part: Window, logits: np.ndarray, strategy: str, labels: Sequence[str],
                    rule: WordRule) -> list[dict[str, Any]]:
    """The entities one window finds in ``text`` (before windows are merged).

    Args:
        text: The window's text.
        part: The window.
        logits: Its logits [tokens, labels].
        strategy: One of ``AGGREGATIONS``.
        labels: The labels in id order.
        rule: The tokenizer's word rule.

    Returns:
        The pipeline's dicts for this window.
    """
    tokens = _tokens(text, part, rule)
    if not tokens:
        return []
    labelled = _labelled(tokens, softmax(np.asarray(logits, dtype=np.float32)), strategy, labels)
    if strategy != "none":
        return _grouped(labelled, text)
    return [{"entity": label, "score": score, "index": part.first_token + index, "word": text[start:end],
             "start": start, "end": end} for label, score, index, start, end in labelled if label != OUTSIDE]


def entities(text: str, parts: Sequence[Window], logits: Sequence[np.ndarray], strategy: str,
             labels: Sequence[str], rule: WordRule) -> list[dict[str, Any]]:
    """The entities of one text from the logits of its windows, each reported once.

    Args:
        text: The text.
        parts: Its windows, in order.
        logits: Each window's logits [tokens, labels].
        strategy: One of ``AGGREGATIONS``.
        labels: The labels in id order.
        rule: The tokenizer's word rule.

    Returns:
        The pipeline's dicts, merged across overlapping windows.

    Raises:
        ValueError: An unknown strategy.
    """
    if strategy not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {strategy!r}; choose one of {', '.join(AGGREGATIONS)}")
    found = [e for part, lg in zip(parts, logits) for e in window_entities(text, part, lg, strategy, labels, rule)]
    return merge_overlapping(found) if len(parts) > 1 else found


def spans(found: Sequence[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of each entity (``entity_group``, or ``none``'s per-token ``entity``)."""
    return [(e.get("entity_group") or entity_type(e["entity"]), e["start"], e["end"]) for e in found]

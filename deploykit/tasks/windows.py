"""Spans over text, shared by the span tasks: character offsets, stride windows over texts longer
than a model takes, and merging what overlapping windows found.

A text of any length is encoded once by the ``tokenizers`` library with truncation at the model's
length and a ``stride``: the encoding and its ``overflowing`` windows are exactly the chunks
``transformers`` builds with ``return_overflowing_tokens=True, stride=K`` (its fast tokenizers
call the same library), each with its own special tokens and with character offsets into the
original text. A question and its context are encoded as a pair the same way, truncating only the
context (``set_windows(..., pair=True)``: transformers' ``truncation="only_second"``, what its
question-answering pipeline builds). ``windows`` flattens them into ``Window`` rows a runtime can batch (they carry
``ids``, ``type_ids`` and ``length``, what the shared feeds and batching plan read), and records
where each window sits among its text's tokens. ``merge_overlapping`` is the transformers
token-classification pipeline's rule for entities found by two overlapping windows (the longer
one wins; on equal length, the higher score), written out here so that the torch-free runtimes
apply it without transformers. ``word_spans`` gives the character span of every word the
model's own pre-tokenizer splits, which is what "a span that splits a word" means.

Standard library only (the encodings come from the caller's ``tokenizers.Tokenizer``): the
torch-free serving side imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

E = TypeVar("E", bound=dict)


@dataclass
class Window:
    """One window of one text: its token ids (specials included), their character offsets into the
    text, and its place among the text's windows.

    Attributes:
        text: Which input text (its index in the batch that was encoded).
        number: The window's number within its text (0 for the first).
        ids: Token ids, special tokens included.
        type_ids: Token type (segment) ids.
        offsets: ``(start, end)`` character offsets into the text, per token ((0, 0) for specials).
        special: 1 for a special token ([CLS], [SEP], padding), else 0.
        tokens: The tokens as the vocabulary spells them (``##son``).
        words: The pre-tokenizer word of each token (None for specials), numbered within the text.
        first_token: How many of the text's content tokens come before this window's first one.
        windows: How many windows its text has.
        sequences: Which sequence of the pair each token belongs to (0 the first, 1 the second, None
            for specials); a single text's tokens are all 0.
    """

    text: int
    number: int
    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[int]
    tokens: list[str]
    words: list[int | None]
    first_token: int = 0
    windows: int = 1
    sequences: list[int | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def truncated(self) -> bool:
        """Whether its text needed more than one window."""
        return self.windows > 1


def check_stride(max_length: int, stride: int, specials: int) -> None:
    """Refuse a stride that leaves a window no new tokens.

    Args:
        max_length: Tokens per window, special tokens included.
        stride: Tokens consecutive windows share.
        specials: Special tokens the tokenizer adds to each window ([CLS] and [SEP]: 2).

    Raises:
        ValueError: ``stride`` is negative or not less than the window's content tokens.
    """
    content = max_length - specials
    if content < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text beside {specials} special tokens")
    if not 0 <= stride < content:
        raise ValueError(f"stride {stride} must be at least 0 and less than the {content} content tokens of a "
                         f"window of {max_length} (max_length minus {specials} special tokens)")


def set_windows(tokenizer: Any, max_length: int, stride: int, pair: bool = False) -> None:
    """Set a ``tokenizers.Tokenizer`` up to cut texts into windows of ``max_length`` tokens that
    share ``stride`` tokens, without padding (each batch pads itself).

    Args:
        tokenizer: The ``tokenizers.Tokenizer`` to set up.
        max_length: Tokens per window, special tokens included.
        stride: Tokens consecutive windows share.
        pair: Inputs are (question, context) pairs: only the second is cut, the first is repeated
            in every window (its length is checked per input: ``check_pair``).

    Raises:
        ValueError: As ``check_stride``.
    """
    check_stride(max_length, stride, tokenizer.num_special_tokens_to_add(pair))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second" if pair else "longest_first")


def windows(encodings: Sequence[Any], max_length: int, stride: int, first_text: int = 0) -> list[Window]:
    """Every window of every text, text by text, in order.

    Args:
        encodings: ``tokenizers`` encodings of the texts, made with ``set_windows``' truncation
            (each carries its further windows in ``overflowing``).
        max_length: The windows' length (as given to ``set_windows``).
        stride: Their overlap (as given to ``set_windows``).
        first_text: The index of the first encoding's text.

    Returns:
        The windows: a text's first, then its overflowing ones.
    """
    out: list[Window] = []
    for i, encoding in enumerate(encodings):
        parts = [encoding, *encoding.overflowing]
        sequences = encoding.sequence_ids
        last = max((s for s in sequences if s is not None), default=0)  # the sequence that is cut
        # The cut sequence's tokens in a full window (a single text: all but the specials).
        content = sum(1 for s in sequences if s == last) if len(parts) > 1 else 0
        for number, part in enumerate(parts):
            out.append(Window(first_text + i, number, part.ids, part.type_ids, part.offsets,
                              part.special_tokens_mask, part.tokens, part.word_ids,
                              number * (content - stride), len(parts), part.sequence_ids))
    return out


def by_text(rows: Iterable[Window]) -> dict[int, list[int]]:
    """Row indices of each text's windows, in window order."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.text, []).append(i)
    return groups


def word_spans(parts: Sequence[Window]) -> list[tuple[int, int]]:
    """The character span of every pre-tokenizer word of one text, in order, across its windows.

    Args:
        parts: The text's windows.

    Returns:
        ``(start, end)`` per word: its first token's start and its last token's end.
    """
    spans: dict[int, list[int]] = {}
    for part in parts:
        for word, (start, end), special in zip(part.words, part.offsets, part.special):
            if word is None or special:
                continue
            known = spans.get(word)
            if known is None:
                spans[word] = [start, end]
            else:
                known[0], known[1] = min(known[0], start), max(known[1], end)
    return [tuple(spans[w]) for w in sorted(spans)]


def merge_overlapping(entities: list[E]) -> list[E]:
    """The entities of overlapping windows, each once: where two overlap, the longer one wins, and
    on equal length the higher ``score``.

    The rule of transformers' token-classification pipeline
    (``TokenClassificationPipeline.aggregate_overlapping_entities``), written out so that a
    torch-free runtime merges exactly as the pipeline does: sort by ``start`` (stably), then walk,
    keeping the current entity while the next one starts inside it.

    Args:
        entities: Dicts with ``start``, ``end`` and ``score``, from all windows of one text.

    Returns:
        The merged entities, by start.
    """
    if not entities:
        return entities
    ordered = sorted(entities, key=lambda e: e["start"])
    merged: list[E] = []
    previous = ordered[0]
    for entity in ordered:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged

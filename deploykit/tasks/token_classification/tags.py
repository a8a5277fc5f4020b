"""Tag schemes to entity spans and back: everything inside is IOB2 over the model's words.

``decode`` reads a tag sequence in IOB1, IOB2 or BIOES into entities (type, first tag, last tag);
``word_tags`` writes entities as the IOB2 tags of words (the training labels and seqeval's input);
``labels`` is the label list of a set of entity types (``O``, then ``B-``/``I-`` per type).

Hand-written because the libraries that read schemes (seqeval's ``get_entities``) only read
IOB2/IOBES leniently and cannot say which tag of which row is wrong, which the data checks need.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deploykit.tasks.token_classification.head import OUTSIDE

PREFIXES = {"iob1": ("B", "I"), "iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}


class TagError(ValueError):
    """A tag sequence that cannot be read (the message names the tag's position and what is wrong)."""


def _split(tag: str, position: int, scheme: str) -> tuple[str, str]:
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, _, kind = tag.partition("-")
    if prefix not in PREFIXES[scheme] or not kind:
        raise TagError(f"tag {position + 1} ({tag!r}) is not {OUTSIDE} or one of "
                       f"{', '.join(p + '-TYPE' for p in PREFIXES[scheme])} ({scheme})")
    return prefix, kind


def decode(tags: Sequence[str], scheme: str, strict: bool = False) -> list[tuple[str, int, int]]:
    """The entities a tag sequence marks.

    Args:
        tags: One tag per word.
        scheme: ``iob1`` (``I-`` starts an entity; ``B-`` only separates two of one type),
            ``iob2`` (every entity starts with ``B-``) or ``bioes`` (``S-`` single, ``B-``...``E-``).
        strict: Refuse an ``I-``/``E-`` that continues no entity of its type, and a BIOES entity
            left open, instead of starting (closing) one there as conlleval reads them.

    Returns:
        ``(type, first, last)`` per entity, word positions inclusive, in order.

    Raises:
        TagError: A tag outside the scheme, or (strict) a broken entity.
    """
    found: list[tuple[str, int, int]] = []
    current: list | None = None  # [type, first, last] of the open entity

    def close() -> None:
        nonlocal current
        if current is not None:
            found.append((current[0], current[1], current[2]))
            current = None

    for i, tag in enumerate(tags):
        prefix, kind = _split(tag, i, scheme)
        continues = current is not None and current[0] == kind and current[2] == i - 1
        if prefix == OUTSIDE:
            if strict and scheme == "bioes" and current is not None:
                raise TagError(f"tag {i + 1} ({tag!r}) leaves the {current[0]} entity of tag {current[1] + 1} "
                               "without its E- tag (bioes)")
            close()
        elif prefix == "B":
            if strict and scheme == "bioes" and current is not None:
                raise TagError(f"tag {i + 1} ({tag!r}) starts an entity before the {current[0]} entity of tag "
                               f"{current[1] + 1} has its E- tag (bioes)")
            close()
            current = [kind, i, i]
        elif prefix == "S":
            close()
            found.append((kind, i, i))
        elif continues:  # I- or E- of the open entity
            current[2] = i
            if prefix == "E":
                close()
        elif scheme == "iob1" and prefix == "I":
            close()
            current = [kind, i, i]
        elif strict:
            raise TagError(f"tag {i + 1} ({tag!r}) continues no {kind} entity ({scheme}: an entity starts "
                           f"with {'B-' if scheme == 'iob2' else 'B- or S-'}); fix the tag or drop --strict-tags")
        else:  # conlleval's reading: an orphan continuation starts an entity
            close()
            current = [kind, i, i]
            if prefix == "E":
                close()
    if strict and scheme == "bioes" and current is not None:
        raise TagError(f"the {current[0]} entity of tag {current[1] + 1} has no E- tag (bioes)")
    close()
    return found


def word_tags(words: Sequence[tuple[int, int]], entities: Iterable[tuple[str, int, int]]) -> list[str]:
    """The IOB2 tag of each word (``(start, end)`` character spans) under character-span entities:
    a word that starts inside an entity is ``B-`` if it is the entity's first word, else ``I-`` (for
    entities on word boundaries, as the data's are, these are the words the entity covers; a
    predicted entity that starts inside a word tags no word of it).

    Args:
        words: The words' character spans, in order.
        entities: ``(type, start, end)`` character spans (not overlapping).

    Returns:
        One tag per word.
    """
    tags = [OUTSIDE] * len(words)
    for kind, start, end in entities:
        first = True
        for i, (w_start, w_end) in enumerate(words):
            if start <= w_start < end:
                tags[i] = f"{'B' if first else 'I'}-{kind}"
                first = False
    return tags


def labels(types: Iterable[str]) -> list[str]:
    """The IOB2 label list of entity types, in id order: ``O``, then ``B-T``, ``I-T`` per sorted type."""
    out = [OUTSIDE]
    for kind in sorted(set(types)):
        out += [f"B-{kind}", f"I-{kind}"]
    return out

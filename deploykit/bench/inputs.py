"""Texts to benchmark with: a seeded sample of a data set, and synthetic texts of exact token length."""

from __future__ import annotations

import random
from typing import Any

from deploykit.errors import BadInputError


def sample_texts(source: str, text_column: str, samples: int, seed: int) -> list[str]:
    """A seeded sample of a data set's texts (its test split when it has one).

    Args:
        source: A CSV/JSON/JSONL/Parquet file, a saved data set folder, or ``tweets``.
        text_column: The text column.
        samples: How many texts (fewer when the source has fewer).
        seed: Seed of the sample.

    Returns:
        Non-empty texts in sampled order.

    Raises:
        BadInputError: Unreadable source, missing column, or no non-empty text.
    """
    from deploykit.data import read_source

    frames, column, _ = read_source(source, text_column, None)
    frame = frames.get("test", next(iter(frames.values())))
    texts = [str(t) for t in frame[column].tolist() if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInputError(f"{source} has no non-empty text in column {column!r}; pick another --data")
    rng = random.Random(seed)
    return rng.sample(texts, min(samples, len(texts)))


def synthetic_texts(tokenizer: Any, seed_texts: list[str], length: int, count: int) -> list[str]:
    """``count`` different texts of exactly ``length`` tokens (special tokens included).

    They are cut, at token boundaries, from the data set's own texts joined together, so the
    vocabulary stays realistic while the length is fixed.

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` (the artifact's), with truncation off.
        seed_texts: Texts to cut from.
        length: Tokens per text, including [CLS]/[SEP] (or the model's equivalents).
        count: How many texts.

    Returns:
        The texts.
    """
    special = tokenizer.num_special_tokens_to_add(False)
    body = length - special
    joined = " ".join(seed_texts)
    encoding = tokenizer.encode(joined, add_special_tokens=False)
    offsets = encoding.offsets
    while len(offsets) < body + count:  # a tiny pool: repeat it until long enough
        joined = joined + " " + joined
        encoding = tokenizer.encode(joined, add_special_tokens=False)
        offsets = encoding.offsets
    texts = []
    stride = max(1, (len(offsets) - body) // max(1, count))
    for i in range(count):
        start = i * stride
        text = joined[offsets[start][0]:offsets[start + body - 1][1]]
        # Re-tokenizing a cut can merge or split a piece; trim or pad with a word until exact.
        for _ in range(8):
            n = len(tokenizer.encode(text).ids)
            if n == length:
                break
            text = text + " a" if n < length else text[:text.rfind(" ")] if " " in text else text
        texts.append(text)
    return texts

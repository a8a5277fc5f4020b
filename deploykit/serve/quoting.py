"""A client's input quoted in an error message: short, and never a new error of its own.

Every refusal that echoes what the client sent (a header, a JSON value, a path segment) goes
through ``quote``, which cuts the text by **characters**. Cutting the UTF-8 bytes of a value
and decoding them (what ``serve/v2.py`` once did with ``orjson.dumps(x)[:40].decode()``) fails
when the cut splits a multi-byte character, and that failure became a 500 for hostile input.
The quote is also bounded, so a 4 MB string in a wrong place makes a one-line log entry.
"""

from __future__ import annotations

from typing import Any

import orjson

LIMIT = 60  # characters of the client's value shown in a message


def quote(value: Any, limit: int = LIMIT) -> str:
    """``value`` as the client sent it, cut to ``limit`` characters (with ``...`` when cut).

    Strings and bytes are shown as Python literals (``'abc'``, escapes for control characters
    and lone surrogates); other JSON values as JSON (``[1, 2]``, ``null``, ``true``).

    Args:
        value: What the client sent (any type; bytes are read as UTF-8, bad bytes replaced).
        limit: Most characters of the value kept before the ``...``.

    Returns:
        A printable, ``orjson``-encodable string (no lone surrogates) of at most about
        ``limit + 5`` characters.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[:4 * limit + 4]).decode("utf-8", errors="replace")
    if isinstance(value, str):
        # repr escapes lone surrogates and control characters; cut the text before repr, so a
        # huge value is never copied whole, and the repr after, so an escape is never split.
        text, cut = repr(value[:limit + 1]), len(value) > limit
    else:
        try:
            text = orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):  # not JSON, or nested deeper than orjson writes
            try:
                text = repr(value)
            except RecursionError:  # JSON may nest 1,024 deep; repr gives up before
                text = f"<a {type(value).__name__} nested too deep to show>"
        cut = False
    if cut or len(text) > limit:
        return text[:limit] + "..."
    return text


def shorten(text: str, limit: int = LIMIT) -> str:
    """Plain ``text`` built from the client's input (a field path such as ``texts.3``), cut to
    ``limit`` characters with ``...`` when longer."""
    return text if len(text) <= limit else text[:limit] + "..."

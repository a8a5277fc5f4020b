"""The cells of token-classification data: token lists, tag lists, and entities with character offsets
in the formats annotation tools export.

Entities columns (the format is detected from the first non-empty cell, then every cell must have
it):

- ``spans``: ``[{"start": 0, "end": 4, "label": "PER"}, ...]`` (deploykit's own, and predict's output);
- ``doccano``: ``[[0, 4, "PER"], ...]`` (doccano's JSONL export, its ``label`` column), or doccano's
  newer ``[{"start_offset": 0, "end_offset": 4, "label": "PER"}, ...]``;
- ``label-studio``: Label Studio's JSON export, its ``annotations`` column:
  ``[{"result": [{"type": "labels", "value": {"start": 0, "end": 4, "labels": ["PER"]}}, ...]}]``
  (the first annotation that was not cancelled; its text is the task's ``data`` object's).

A cell of a CSV file may hold any of these as JSON text. Every problem raises ``CellError`` with
what is wrong, which the data reader turns into a message naming the row and column.
"""

from __future__ import annotations

import json
from typing import Any

ENTITY_FORMATS = ("spans", "doccano", "label-studio")


class CellError(ValueError):
    """A cell that cannot be read (the message says what is wrong with it)."""


def _listed(value: Any, what: str) -> list:
    """A cell as a list: a list, a numpy array (Parquet, saved data sets) or JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise CellError(f"is text but not a JSON list of {what}") from None
    if hasattr(value, "tolist") and not isinstance(value, (list, str)):
        value = value.tolist()
    if value is None or (isinstance(value, float) and value != value):
        raise CellError("is empty")
    if not isinstance(value, list):
        raise CellError(f"is not a list of {what} ({str(value)[:60]!r})")
    return value


def tokens(value: Any) -> list[str]:
    """A tokens cell: a list of non-empty strings (in a CSV cell: JSON, or words separated by spaces)."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = value.split()
    items = _listed(value, "tokens")
    if not items:
        raise CellError("holds no tokens")
    for i, token in enumerate(items):
        if not isinstance(token, str) or not token.strip():
            raise CellError(f"token {i + 1} ({token!r}) is not a non-empty string")
    return [t.strip() for t in items]


def tags(value: Any, names: list[str] | None) -> list[str]:
    """A tags cell: tag strings, or ids mapped through ``names`` (in a CSV cell: JSON, or space-separated)."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = value.split()
    items = _listed(value, "tags")
    out = []
    for i, tag in enumerate(items):
        if isinstance(tag, str) and not (tag.strip().lstrip("-").isdigit() and names):
            out.append(tag.strip())
            continue
        try:
            number = int(tag)
        except (TypeError, ValueError):
            raise CellError(f"tag {i + 1} ({tag!r}) is neither a tag name nor an id") from None
        if names is None:
            raise CellError(f"holds tag ids ({tag!r}) but no names for them: pass --tag-names (e.g. "
                            "O,B-PER,I-PER), or a saved data set whose column is a ClassLabel")
        if not 0 <= number < len(names):
            raise CellError(f"tag {i + 1} is id {number}, outside the {len(names)} --tag-names")
        out.append(names[number])
    return out


def entity_format(value: Any) -> str | None:
    """The format of a non-empty entities cell (one of ``ENTITY_FORMATS``), or None when it holds none."""
    try:
        items = _listed(value, "entities")
    except CellError:
        return None
    if not items:
        return None
    first = items[0]
    if isinstance(first, (list, tuple)):
        return "doccano"
    if isinstance(first, dict):
        if "result" in first or "was_cancelled" in first:
            return "label-studio"
        if "start_offset" in first:
            return "doccano"
        return "spans"
    return None


def _span(start: Any, end: Any, label: Any, i: int) -> tuple[str, int, int]:
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, (int, float)) \
            or not isinstance(end, (int, float)) or int(start) != start or int(end) != end:
        raise CellError(f"entity {i + 1} has offsets ({start!r}, {end!r}) that are not whole numbers")
    if not isinstance(label, str) or not label.strip() or label.strip()[:2] in ("B-", "I-", "E-", "S-") \
            or " " in label.strip():
        raise CellError(f"entity {i + 1} has the label {label!r}; a label is an entity type such as PER "
                        "(no spaces, no B-/I- prefix)")
    return label.strip(), int(start), int(end)


def entities(value: Any, fmt: str) -> list[tuple[str, int, int]]:
    """An entities cell in format ``fmt``: ``(type, start, end)`` per entity, as written (unchecked
    against the text)."""
    items = _listed(value, "entities")
    out = []
    if fmt == "label-studio":
        live = [a for a in items if isinstance(a, dict) and not a.get("was_cancelled")]
        if items and not live:
            raise CellError("holds only cancelled Label Studio annotations")
        results = live[0].get("result", []) if live else []
        if not isinstance(results, list):
            raise CellError("holds a Label Studio annotation whose 'result' is not a list")
        for i, result in enumerate(r for r in results if isinstance(r, dict) and r.get("type", "labels") == "labels"):
            value = result.get("value")
            names = value.get("labels") if isinstance(value, dict) else None
            if not isinstance(names, list) or len(names) != 1:
                raise CellError(f"Label Studio result {i + 1} does not carry exactly one label in value.labels")
            out.append(_span(value.get("start"), value.get("end"), names[0], i))
        return out
    for i, item in enumerate(items):
        if fmt == "doccano" and isinstance(item, (list, tuple)) and len(item) == 3:
            out.append(_span(item[0], item[1], item[2], i))
        elif fmt == "doccano" and isinstance(item, dict) and "start_offset" in item:
            out.append(_span(item.get("start_offset"), item.get("end_offset"), item.get("label"), i))
        elif fmt == "spans" and isinstance(item, dict) and {"start", "end", "label"} <= set(item):
            out.append(_span(item["start"], item["end"], item["label"], i))
        else:
            raise CellError(f"entity {i + 1} ({str(item)[:60]!r}) is not in the column's {fmt} format")
    return out

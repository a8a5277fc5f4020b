"""text-generation rows: prompt/completion columns, or a column of chat messages, in; splits out.

The source is read and split by ``deploykit.data`` (the same seed gives the same splits on any
machine); a chat row's prompt is its messages before the last, the assistant's answer, which is
the completion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deploykit.config import DataConfig
from deploykit.data import (SPLIT_NAMES, Splits, group_cells, read_frames, require_columns, slice_cells,
                            source_sha256, subsample, text_cells, three_splits)
from deploykit.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Pairs:
    """text-generation rows: each prompt (a string, or the chat messages before the answer) and
    the completion the model should write after it."""

    prompts: list[str | list[dict[str, str]]]
    completions: list[str]
    slices: list[str] | None = None  # each row's value of --slice-column, when asked for

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def of(cls, rows: list[tuple], slice_column: str | None) -> Pairs:
        """From (prompt, completion, slice) rows."""
        return cls([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows] if slice_column else None)


def _message_list(value: Any, row: int, column: str, where: str) -> list[dict[str, str]]:
    """One cell of a chat column as a list of {role, content} (a JSON string in a CSV cell)."""
    def bad(why: str) -> BadInputError:
        return BadInputError(f"{where}: row {row + 1} of column '{column}' {why}; each row must be "
                             f"a list of {{\"role\": ..., \"content\": ...}} messages ending with "
                             f"the assistant's answer - fix or remove the row")

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise bad("is text but not a JSON list of messages") from None
    if not hasattr(value, "__len__") or isinstance(value, (str, dict)):
        raise bad(f"is not a list of messages ({value!r})")
    messages = []
    for message in list(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise bad(f"has a message that is not {{role: text, content: text}} ({message!r})")
        messages.append({"role": message["role"], "content": message["content"]})
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise bad("does not end with an assistant message after at least one other message")
    if not messages[-1]["content"].strip():
        raise bad("has an empty assistant answer")
    return messages


def _pair_rows(frame: pd.DataFrame, cfg: DataConfig, where: str, slice_column: str | None) -> list[tuple]:
    """(prompt, completion, slice, group) per row; a chat row's prompt is its messages before the answer."""
    if cfg.prompt_column in frame.columns:
        prompts = text_cells(frame, cfg.prompt_column, where)
        completions = text_cells(frame, cfg.completion_column, where)
    else:
        chats = [_message_list(v, i, cfg.messages_column, where) for i, v in enumerate(frame[cfg.messages_column])]
        prompts, completions = [c[:-1] for c in chats], [c[-1]["content"] for c in chats]
    return list(zip(prompts, completions, slice_cells(frame, slice_column), group_cells(frame, cfg.group_column)))


def _read_pairs(cfg: DataConfig, slice_column: str | None) -> tuple[dict[str, list[tuple]], str]:
    """text-generation rows by split: prompt/completion columns, or else a messages column."""
    if cfg.data == "tweets":
        raise BadInputError("the built-in 'tweets' data is labelled text for --task text-classification; "
                            "give --data a file of prompts and completions for text-generation")
    frames, where = read_frames(cfg.data)
    for split, frame in frames.items():
        if cfg.prompt_column in frame.columns:
            require_columns({split: frame}, where, {"completion": cfg.completion_column})
        elif cfg.messages_column not in frame.columns:
            raise BadInputError(
                f"{where} ({split}) has neither a prompt column '{cfg.prompt_column}' nor a chat "
                f"messages column '{cfg.messages_column}'; its columns are "
                f"{', '.join(map(str, frame.columns))}; set --prompt-column and --completion-column, "
                f"or --messages-column")
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column})
    return {name: _pair_rows(f, cfg, f"{where} ({name})", slice_column) for name, f in frames.items()}, where


def load_splits(cfg: DataConfig, slice_column: str | None = None) -> Splits[Pairs]:
    """Read ``cfg.data`` and return reproducible train/validation/test splits of prompt/completion pairs.

    Args:
        cfg: The data options (prompt/completion or messages columns).
        slice_column: A column whose value each row keeps as ``slices`` (evaluation's
            per-slice report).

    Returns:
        The three splits and the data's sha256.

    Raises:
        BadInputError: Any problem with the source, named with the file, row or column.
    """
    raw, where = _read_pairs(cfg, slice_column)
    rows = three_splits(raw, cfg, where, group=lambda row: row[3])
    rows["train"] = subsample(rows["train"], cfg.max_train_samples, cfg.seed, None)
    return Splits(*(Pairs.of(rows[name], slice_column) for name in SPLIT_NAMES), source_sha256(cfg.data))


def held_out(dcfg: DataConfig, split: str, slice_column: str | None = None) -> tuple[Pairs, str]:
    """The pairs of one split (or ``all`` rows), rebuilt with ``dcfg``'s seed and ratios: exactly
    the ones training held out.

    Returns:
        (the pairs, the data's sha256).

    Raises:
        BadInputError: Bad source, columns or rows.
    """
    if split == "all":
        raw, _ = _read_pairs(dcfg, slice_column)
        return Pairs.of([row for rows in raw.values() for row in rows], slice_column), source_sha256(dcfg.data)
    splits = load_splits(dcfg, slice_column)
    return splits.get(split), splits.data_sha256

"""question-answering rows: SQuAD JSON or flat files in, (question, context, answers) out.

Two shapes, both read by ``load_splits``:

- **SQuAD v1.1/v2.0 JSON** (``data/paragraphs/qas``, detected by its shape): each question with its
  paragraph's context, its answers (``text``, ``answer_start``) and, in v2.0, ``is_impossible``; the
  article's ``title`` is a column (``--group-column title`` keeps an article in one split), as is
  ``context`` (``--group-column context`` keeps a context's questions together).
- **flat files** in the formats every task reads (``deploykit.data``: CSV, JSON, JSONL, Parquet, a
  ``datasets.save_to_disk`` folder): ``--question-column``, ``--context-column`` and either
  ``--answers-column`` (SQuAD's ``{"text": [...], "answer_start": [...]}`` as the ``datasets`` SQuAD
  feature holds it, a JSON string of it in a CSV cell, or a list of ``{text, answer_start}``) or
  ``--answer-column`` with ``--answer-start-column`` (one answer per row).

An answer must be the context's text at its start; a question without an answer needs
``--allow-no-answer`` (SQuAD 2.0); an empty question or context is refused. A bad row is named by row
and column (exit 2), or skipped and counted with ``--skip-bad-rows``. Splits are ``deploykit.data``'s
(seeded 80/10/10, or the source's own; ``--group-column``).
"""

from __future__ import annotations

import json
import logging
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploykit.config import DataConfig
from deploykit.data import (SPLIT_NAMES, Splits, group_cells, read_frames, require_columns, slice_cells,
                            source_sha256, subsample, three_splits)
from deploykit.errors import BadInputError
from deploykit.tasks.token_classification.data import RowProblems, refuse_or_skip

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

Answer = tuple[str, int]  # (text, character start in the context)


@dataclass
class Questions:
    """One split: questions, their contexts and gold answers (empty: unanswerable)."""

    questions: list[str]
    contexts: list[str]
    answers: list[list[Answer]]
    ids: list[str] = field(default_factory=list)
    slices: list[str] | None = None  # each row's value of --slice-column, when asked for

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    def of(cls, rows: list[tuple], slice_column: str | None) -> Questions:
        """From (question, context, answers, id, slice, group) rows."""
        return cls([r[0] for r in rows], [r[1] for r in rows], [list(r[2]) for r in rows], [r[3] for r in rows],
                   [r[4] for r in rows] if slice_column else None)

    def texts(self, i: int) -> list[str]:
        """The gold answer texts of question ``i``."""
        return [text for text, _ in self.answers[i]]

    def take(self, n: int | None) -> Questions:
        """The first ``n`` questions (all with None)."""
        return self if n is None else self.pick(range(min(n, len(self))))

    def pick(self, indices: Sequence[int]) -> Questions:
        """The questions at ``indices``, in that order."""
        return Questions([self.questions[i] for i in indices], [self.contexts[i] for i in indices],
                         [self.answers[i] for i in indices], [self.ids[i] for i in indices] if self.ids else [],
                         [self.slices[i] for i in indices] if self.slices is not None else None)


@dataclass
class QuestionSplits(Splits[Questions]):
    """The three splits, how the data was read, how many rows ``--skip-bad-rows`` skipped, and how many
    training questions have no answer."""

    shape: str = ""
    skipped: int = 0
    no_answer: int = 0


# --- reading ---------------------------------------------------------------------------------

def squad_frame(path: Path) -> pd.DataFrame | None:
    """A SQuAD JSON file as a flat frame (``id``, ``title``, ``question``, ``context``, ``answers``), or
    None when ``path`` is not one (another JSON layout).

    Raises:
        BadInputError: A SQuAD file whose nesting is broken (named by article, paragraph and question).
    """
    import pandas as pd

    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # JSON lines, or not JSON: the flat readers say what is wrong
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), list)):
        return None
    rows = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise BadInputError(f"{path}: data[{a}] has no 'paragraphs' list; is it a SQuAD file?")
        for p, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise BadInputError(f"{path}: data[{a}].paragraphs[{p}] has no 'qas' list; is it a SQuAD file?")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise BadInputError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}] is not an object")
                answers = [] if qa.get("is_impossible") else (qa.get("answers") or [])
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "title": article.get("title"),
                             "question": qa.get("question"), "context": paragraph.get("context"),
                             "answers": answers})
    if not rows:
        raise BadInputError(f"{path} is a SQuAD file without questions; give one with data/paragraphs/qas")
    return pd.DataFrame(rows)


class CellError(ValueError):
    """An answers cell that cannot be read (its message says why)."""


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def answers_cell(cell: Any) -> list[Answer]:
    """The (text, start) answers of one answers cell: SQuAD's ``{"text": [...], "answer_start": [...]}``
    (lists or arrays), a JSON string of it, or a list of ``{"text", "answer_start"}``.

    Raises:
        CellError: Another shape.
    """
    if _empty(cell):
        return []
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except ValueError:
            raise CellError("is not JSON; write SQuAD's {\"text\": [...], \"answer_start\": [...]}") from None
    if isinstance(cell, dict):
        texts, starts = cell.get("text"), cell.get("answer_start")
        # A scalar (a JSON number, numpy's int64 from pyarrow) is one answer; an array or list is several.
        texts = [texts] if np.ndim(texts) == 0 and texts is not None else list(texts if texts is not None else [])
        starts = [starts] if np.ndim(starts) == 0 and starts is not None else list(starts if starts is not None else [])
        if len(texts) != len(starts):
            raise CellError(f"has {len(texts)} answer texts but {len(starts)} answer_start values; give one start "
                            "per text")
        pairs = list(zip(texts, starts))
    elif isinstance(cell, (list, tuple)) or hasattr(cell, "tolist"):
        items = cell.tolist() if hasattr(cell, "tolist") else list(cell)
        if not all(isinstance(i, dict) for i in items):
            raise CellError("is a list of other things than {text, answer_start} objects")
        pairs = [(i.get("text"), i.get("answer_start")) for i in items]
    else:
        raise CellError(f"is {type(cell).__name__}, not SQuAD's {{\"text\": [...], \"answer_start\": [...]}}")
    out = []
    for text, start in pairs:
        as_text, at = answer_text(text), answer_start(start)
        if as_text is None or at is None:
            raise CellError(f"has the answer {text!r} at {start!r}; an answer is a text and an integer start")
        out.append((as_text, at))
    return out


def answer_text(value: Any) -> str | None:
    """An answer's text: a string, or a number as its context writes it (a "how many" answer column that
    pandas or pyarrow read as int, or as float beside empty cells); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral) or float(value).is_integer():
        return str(int(value))
    return str(value)


def answer_start(value: Any) -> int | None:
    """An answer's character start: any integer (numpy's int32/int64 from Parquet and ``save_to_disk``
    included) or a whole float (a CSV column with empty cells); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return operator.index(value)
    return int(value) if float(value).is_integer() else None


def check_answers(context: str, answers: list[Answer]) -> str | None:
    """Why the answers do not fit their context (the text must be there at its start), or None."""
    for text, start in answers:
        if not text.strip():
            return f"has an empty answer text at {start}; remove it (an unanswerable question has no answers)"
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f" (it is at {found})" if found >= 0 else " (it is not in the context)"
            return (f"has the answer {text!r} at {start}, where the context reads "
                    f"{context[start:start + len(text)]!r}{hint}; fix answer_start")
    return None


def _frames(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], str, str]:
    """The source's frames by split, how to name it, and its shape."""
    if cfg.data == "tweets":
        raise BadInputError("the built-in 'tweets' data is labelled text for --task text-classification; give "
                            "--data a SQuAD JSON file, or a file of questions, contexts and answers")
    squad = squad_frame(Path(cfg.data))
    if squad is not None:
        return {"all": squad}, cfg.data, "SQuAD JSON"
    frames, where = read_frames(cfg.data)
    return frames, where, "flat"


def _read(cfg: DataConfig, slice_column: str | None) -> tuple[dict[str, list[tuple]], str, str, int]:
    """Rows ``(question, context, answers, id, slice, group)`` by split, how the source was read, its
    shape and the count of skipped rows.

    Raises:
        BadInputError: A missing column, or (without --skip-bad-rows) the first bad row.
    """
    if (cfg.answer_column is None) != (cfg.answer_start_column is None):
        raise BadInputError("give --answer-column and --answer-start-column together (an answer text and its "
                            "character start), or neither (--answers-column holds both)")
    frames, where, shape = _frames(cfg)
    squad = shape == "SQuAD JSON"
    question, context = ("question", "context") if squad else (cfg.question_column, cfg.context_column)
    pair = not squad and cfg.answer_column is not None
    answers = "answers" if squad else (cfg.answer_column if pair else cfg.answers_column)
    require_columns(frames, where, {"question": question, "context": context})
    if pair:
        require_columns(frames, where, {"answer": cfg.answer_column, "answer-start": cfg.answer_start_column})
    else:
        require_columns(frames, where, {"answers": answers})
    require_columns(frames, where, {"slice": slice_column, "group": cfg.group_column})
    if not squad:
        shape = (f"flat ('{question}', '{context}', " + (f"'{cfg.answer_column}' + '{cfg.answer_start_column}')"
                                                         if pair else f"'{answers}')"))
    raw, problems = {}, []
    for split, frame in frames.items():
        rows = RowProblems(f"{where} ({split})" if len(frames) > 1 or split != "all" else where)
        ids = [str(v) for v in frame["id"].tolist()] if "id" in frame.columns else \
            [f"{split}-{i}" for i in range(len(frame))]
        extra = list(zip(slice_cells(frame, slice_column), group_cells(frame, cfg.group_column)))
        starts = frame[cfg.answer_start_column].tolist() if pair else [None] * len(frame)
        for i, (q, c, a, s) in enumerate(zip(frame[question].tolist(), frame[context].tolist(),
                                              frame[answers].tolist(), starts)):
            if not isinstance(q, str) or not q.strip():
                rows.bad(i, question, "is empty or not text; remove the row or write the question")
                continue
            if not isinstance(c, str) or not c.strip():
                rows.bad(i, context, "is empty or not text; remove the row or give the context")
                continue
            try:
                found = answers_cell(None if _empty(a) else {"text": [a], "answer_start": [s]}) if pair \
                    else answers_cell(a)
            except CellError as exc:
                rows.bad(i, answers, str(exc))
                continue
            problem = check_answers(c, found)
            if problem:
                rows.bad(i, cfg.answer_start_column if pair else answers, problem)
                continue
            if not found and not cfg.allow_no_answer:
                rows.bad(i, answers, "has no answer; pass --allow-no-answer for unanswerable questions "
                                     "(SQuAD 2.0), or give the answer")
                continue
            rows.rows.append((q, c, found, ids[i], *extra[i]))
        raw[split], problems = rows.rows, problems + rows.problems
    refuse_or_skip(problems, cfg.skip_bad_rows, where, raw)
    return raw, where, shape, len(problems)


def load_splits(cfg: DataConfig, slice_column: str | None = None) -> QuestionSplits:
    """Read ``cfg.data`` and return reproducible train/validation/test splits of questions.

    Args:
        cfg: The data options (columns, --allow-no-answer, --group-column, --skip-bad-rows).
        slice_column: A column whose value each row keeps as ``slices``.

    Returns:
        The splits, the data's sha256, its shape and skipped rows.

    Raises:
        BadInputError: Any problem with the source, named with the file, row and column.
    """
    raw, where, shape, skipped = _read(cfg, slice_column)
    rows = three_splits(raw, cfg, where, group=lambda row: row[5])
    rows["train"] = subsample(rows["train"], cfg.max_train_samples, cfg.seed, None)
    no_answer = sum(1 for row in rows["train"] if not row[2])
    if no_answer == len(rows["train"]):
        raise BadInputError(f"{where}: no training question has an answer; a reader needs answered questions")
    return QuestionSplits(*(Questions.of(rows[name], slice_column) for name in SPLIT_NAMES), source_sha256(cfg.data),
                          shape, skipped, no_answer)


def held_out(dcfg: DataConfig, split: str, slice_column: str | None = None) -> tuple[Questions, str]:
    """The questions of one split (rebuilt with ``dcfg``'s seed and ratios: exactly the ones training
    held out), or ``all`` rows of ``dcfg.data`` (a separate test file).

    Returns:
        (the questions, the data's sha256).

    Raises:
        BadInputError: Bad source or rows.
    """
    if split == "all":
        raw, _, _, _ = _read(dcfg, slice_column)
        return Questions.of([row for part in raw.values() for row in part], slice_column), source_sha256(dcfg.data)
    splits = load_splits(dcfg, slice_column)
    return splits.get(split), splits.data_sha256

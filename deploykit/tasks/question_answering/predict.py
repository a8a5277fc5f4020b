"""``deploykit predict`` on a question-answering artifact: each row's best answer (JSONL).

A row is a question and its context (``--question-column``, ``--context-column``; default ``question``
and ``context``): the engines read both cells (``TextSource.more``) and hand the scorer each row as the
pair ``(question, context)``. Torch-free: the serving ``Runtime`` windows
each chunk's contexts and batches the windows by its token budget; a row's answer is the service's
(the manifest's null threshold applied).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.predict import TextSource
from deploykit.tasks.question_answering.runtime import PairError, Runtime

QUESTION, CONTEXT = "question", "context"


def batch_rows(cfg: PredictConfig, manifest: Manifest) -> int:
    """Rows per batch an engine hands the scorer: ``--chunk-size`` (the runtime windows the contexts and
    splits the windows into model calls by its token budget itself)."""
    return cfg.chunk_size


def text_source(cfg: PredictConfig) -> TextSource:
    """The question column, with the context column beside it: a row's text is ``(question, context)``."""
    return TextSource(cfg.question_column or QUESTION, flag="--question-column",
                      more=((cfg.context_column or CONTEXT, "--context-column"),))


class Scorer:
    """A reader loaded once; each row's ``{"answer", "score", "start", "end"}`` (an empty answer at 0-0
    when the question has none in its context).

    Raises:
        BadInputError, IntegrityError: As ``Runtime`` (and a question the model cannot take).
    """

    what = "answers"

    def __init__(self, cfg: PredictConfig) -> None:
        # One caller calling back to back: idle threads may spin (see the classifier runtime's ``spin``).
        threads = cfg.threads if cfg.engine == "local" else cfg.threads_per_worker
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=threads, max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size, spin=True)
        self.name, self.variant = self.runtime.name, self.runtime.variant

    def __call__(self, texts: list[tuple[str, str]], keys: list[int]) -> list[dict[str, Any]]:
        try:
            found = self.runtime.predict([q for q, _ in texts], [c for _, c in texts])
        except PairError as exc:  # named by its place in the chunk: name its row in the file instead
            raise BadInputError(f"row {keys[exc.index] + 1}: the question {exc.problem}") from None
        return [{k: f[0][k] for k in ("answer", "score", "start", "end")} for f in found]

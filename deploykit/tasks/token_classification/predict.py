"""``deploykit predict`` on a token-classification artifact: each row's entities (JSONL spans).

Torch-free: the serving ``Runtime`` windows each chunk's texts and batches the windows by its
token budget; a row's ``entities`` are the service's (``--aggregation``, default the manifest's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deploykit.config import PredictConfig
from deploykit.tasks.token_classification import formats
from deploykit.tasks.token_classification.runtime import Runtime


class Scorer:
    """A token classifier loaded once; each row's ``{"entities": [{entity_group, score, word, start, end}]}``.

    Raises:
        BadInputError, IntegrityError: As ``Runtime`` (and an unknown ``--aggregation``).
    """

    what = "entity lists"

    def __init__(self, cfg: PredictConfig) -> None:
        # One caller calling back to back: idle threads may spin (see the classifier runtime's ``spin``).
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size, spin=True)
        self.aggregation = self.runtime.check_aggregation(cfg.aggregation)
        self.name, self.variant = self.runtime.name, self.runtime.variant
        self.text_column, self.tokens_column = cfg.text_column, cfg.tokens_column

    def reads(self) -> tuple[str, Callable[[Any], str] | None, str]:
        """(column, cell -> text, its flag): ``--tokens-column``'s tokens joined by single spaces (the
        text training built from them), else ``--text-column`` as it is."""
        if self.tokens_column is None:
            return self.text_column, None, "--text-column"
        return self.tokens_column, lambda cell: " ".join(formats.tokens(cell)), "--tokens-column"

    def __call__(self, texts: list[str], first_row: int) -> list[dict[str, Any]]:
        return [{"entities": found} for found in self.runtime.predict(texts, self.aggregation)]

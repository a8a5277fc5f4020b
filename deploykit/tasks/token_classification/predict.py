"""``deploykit predict`` on a token-classification artifact: each row's entities (JSONL spans).

Torch-free: the serving ``Runtime`` windows each chunk's texts and batches the windows by its
token budget; a row's ``entities`` are the service's (``--aggregation``, default the manifest's).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.manifest import Manifest
from deploykit.predict import TextSource
from deploykit.tasks.token_classification import formats
from deploykit.tasks.token_classification.runtime import Runtime


def batch_rows(cfg: PredictConfig, manifest: Manifest) -> int:
    """Rows per batch an engine hands the scorer: ``--chunk-size`` (the runtime windows the texts
    and splits the windows into model calls by its token budget itself)."""
    return cfg.chunk_size


def text_source(cfg: PredictConfig) -> TextSource:
    """``--tokens-column``'s tokens joined by single spaces (the text training built from them), else
    ``--text-column`` as it is."""
    if cfg.tokens_column is None:
        return TextSource(cfg.text_column)
    return TextSource(cfg.tokens_column, lambda cell: " ".join(formats.tokens(cell)), "--tokens-column")


class Scorer:
    """A token classifier loaded once; each row's ``{"entities": [{entity_group, score, word, start, end}]}``.

    Raises:
        BadInputError, IntegrityError: As ``Runtime`` (and an unknown ``--aggregation``).
    """

    what = "entity lists"

    def __init__(self, cfg: PredictConfig) -> None:
        # One caller calling back to back: idle threads may spin (see the classifier runtime's ``spin``).
        threads = cfg.threads if cfg.engine == "local" else cfg.threads_per_worker
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=threads, max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size, spin=True)
        self.aggregation = self.runtime.check_aggregation(cfg.aggregation)
        self.name, self.variant = self.runtime.name, self.runtime.variant

    def __call__(self, texts: list[str], keys: list[int]) -> list[dict[str, Any]]:
        return [{"entities": found} for found in self.runtime.predict(texts, self.aggregation)]

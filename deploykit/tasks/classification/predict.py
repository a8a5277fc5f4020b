"""``deploykit predict`` on a text-classification artifact: a label and its scores per row.

Torch-free: the serving ``Runtime`` scores each batch (token-budget model calls, length-sorted).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.predict import TextSource
from deploykit.tasks.classification.runtime import Runtime


def batch_rows(cfg: PredictConfig, manifest: Manifest) -> int:
    """Rows per batch an engine hands the scorer: ``--chunk-size`` (the runtime splits a batch
    into model calls by its token budget itself)."""
    return cfg.chunk_size



def text_source(cfg: PredictConfig) -> TextSource:
    """The text is ``--text-column`` as it is; for a text-pair artifact, with ``--text-pair-column``."""
    return TextSource(cfg.text_column, more=((cfg.text_pair_column, "--text-pair-column"),) if cfg.text_pair_column else ())

class Scorer:
    """A classifier verified and loaded once; each row's answer (``Runtime.predict``: ``{"label", "score",
    "scores", "truncated"}``, a multi-label model's ``{"labels", "scores", "truncated"}``, a relevance or
    similarity model's ``{"score", "truncated"}``).

    Raises:
        BadInputError, IntegrityError: As ``Runtime``, or a pair model without ``--text-pair-column``
            (or that option for a model of single texts).
    """

    what = "predictions"

    def __init__(self, cfg: PredictConfig) -> None:
        # One caller calling back to back: idle threads may spin (see Runtime's ``spin``).
        threads = cfg.threads if cfg.engine == "local" else cfg.threads_per_worker
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=threads, max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size, spin=True)
        self.name, self.variant = self.runtime.name, self.runtime.variant
        pairs = self.runtime.text_pair
        if pairs != bool(cfg.text_pair_column):
            what = ("pairs of texts: pass --text-pair-column (the column of each row's second text)" if pairs
                    else "single texts: drop --text-pair-column")
            raise BadInputError(f"{cfg.artifact} scores {what}")

    def __call__(self, texts: list[str], keys: list[int]) -> list[dict[str, Any]]:
        return self.runtime.predict(texts)

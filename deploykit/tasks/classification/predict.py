"""``deploykit predict`` on a text-classification artifact: a label and its scores per row.

Torch-free: the serving ``Runtime`` scores each chunk (token-budget batches, length-sorted).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.tasks.classification.runtime import Runtime


class Scorer:
    """A classifier loaded once; each row's ``{"label", "score", "scores", "truncated"}``.

    Raises:
        BadInputError, IntegrityError: As ``Runtime``.
    """

    what = "predictions"

    def __init__(self, cfg: PredictConfig) -> None:
        # One caller calling back to back: idle threads may spin (see Runtime's ``spin``).
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size, spin=True)
        self.name, self.variant = self.runtime.name, self.runtime.variant

    def __call__(self, texts: list[str], first_row: int) -> list[dict[str, Any]]:
        return self.runtime.predict(texts)

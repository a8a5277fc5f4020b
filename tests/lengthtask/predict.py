"""``deploykit predict`` on a text-length artifact: each row's bucket, its probability and word count."""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.manifest import Manifest
from deploykit.predict import TextSource
from lengthtask.runtime import Runtime


def batch_rows(cfg: PredictConfig, manifest: Manifest) -> int:
    return cfg.chunk_size



def text_source(cfg: PredictConfig) -> TextSource:
    """The text is ``--text-column`` as it is."""
    return TextSource(cfg.text_column)

class Scorer:
    what = "buckets"

    def __init__(self, cfg: PredictConfig) -> None:
        threads = cfg.threads if cfg.engine == "local" else cfg.threads_per_worker
        self.runtime = Runtime(cfg.artifact, cfg.variant, threads=threads, spin=True)
        self.name, self.variant = self.runtime.name, self.runtime.variant

    def __call__(self, texts: list[str], keys: list[int]) -> list[dict[str, Any]]:
        return [{"bucket": r["label"], "score": r["score"], "words": len(t.split())}
                for t, r in zip(texts, self.runtime.predict(texts))]

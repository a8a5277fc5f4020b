"""``deploykit predict`` on a text-generation artifact: prompts in, completions out.

Torch-free: each batch is generated on the iteration-level scheduler (``runtime.Generator``).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.manifest import Manifest
from deploykit.predict import TextSource
from deploykit.tasks.generation.head import Generation
from deploykit.tasks.generation.runtime import Generator


def batch_rows(cfg: PredictConfig, manifest: Manifest) -> int:
    """Rows per batch, sized by tokens (decoding is slower than one forward pass): as many
    sequences of the longest size (``max_length`` prompt tokens + the new tokens) as fit
    ``--max-batch-tokens``, at most ``--chunk-size``."""
    new = cfg.max_new_tokens or manifest.head_as(Generation).defaults.get("max_new_tokens") or 64
    return max(1, min(cfg.chunk_size, cfg.max_batch_tokens // (manifest.max_length + int(new))))



def text_source(cfg: PredictConfig) -> TextSource:
    """The text is ``--text-column`` as it is."""
    return TextSource(cfg.text_column)

class Scorer:
    """A decoder verified and loaded once; each row's ``{"completion", "finish_reason",
    "prompt_tokens", "completion_tokens"}``. Row ``key`` (its number in its file) samples with seed
    ``cfg.seed + key`` (only when ``--temperature`` > 0), whichever engine and batch it lands in.

    Raises:
        BadInputError, IntegrityError: As ``Generator``; a prompt that does not fit.
    """

    what = "completions"

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg
        threads = cfg.threads if cfg.engine == "local" else cfg.threads_per_worker
        # One caller decoding back to back: idle threads may spin (the Generator's ``spin``).
        self.generator = Generator(cfg.artifact, cfg.variant, threads=threads, max_batch_size=cfg.max_batch_size,
                                   max_cache_tokens=cfg.max_batch_tokens, spin=True)
        self.name, self.variant = self.generator.name, self.generator.variant

    def __call__(self, texts: list[str], keys: list[int]) -> list[dict[str, Any]]:
        cfg, gen = self.cfg, self.generator
        ids = [gen.encode(t) for t in texts]
        settings = [gen.sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + k)
                    for k in keys]
        for tokens, s in zip(ids, settings):
            gen.check_fits(len(tokens), s)
        return [{"completion": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens} for c in gen.generate_ids(ids, settings)]

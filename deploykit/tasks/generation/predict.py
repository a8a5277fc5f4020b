"""``deploykit predict`` on a text-generation artifact: prompts in, completions out.

Torch-free: each chunk is generated on the iteration-level scheduler (``runtime.Generator``).
"""

from __future__ import annotations

from typing import Any

from deploykit.config import PredictConfig
from deploykit.tasks.generation.runtime import Generator


class Scorer:
    """A decoder loaded once; each row's ``{"completion", "finish_reason", "prompt_tokens",
    "completion_tokens"}``. Row ``i`` samples with seed ``cfg.seed + i`` (only when
    ``--temperature`` > 0).

    Raises:
        BadInputError, IntegrityError: As ``Generator``; a prompt that does not fit.
    """

    what = "completions"

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg
        # One caller decoding back to back: idle threads may spin (the Generator's ``spin``).
        self.generator = Generator(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_size=cfg.max_batch_size,
                                   max_cache_tokens=cfg.max_batch_tokens, spin=True)
        self.name, self.variant = self.generator.name, self.generator.variant

    def __call__(self, texts: list[str], first_row: int) -> list[dict[str, Any]]:
        cfg = self.cfg
        return [{"completion": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens}
                for c in self.generator.generate(texts, max_new_tokens=cfg.max_new_tokens,
                                                 temperature=cfg.temperature, seed=cfg.seed + first_row)]

"""``deploykit predict`` on a text-generation artifact: prompts in, completions out (JSONL).

Rows are read, written and cleaned up as for a classifier (``deploykit.predict.write_rows``:
chunks, one JSON line per row in input order, a temporary file renamed into place at the end);
each chunk is generated on the iteration-level scheduler (``deploykit.generator``). Torch-free.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deploykit.config import PredictConfig
from deploykit.tasks.generation.runtime import Generator

log = logging.getLogger(__name__)


def run(cfg: PredictConfig) -> Path:
    """Complete every prompt of ``cfg.data`` and write ``cfg.out``.

    Each line is ``{"row", "completion", "finish_reason", "prompt_tokens", "completion_tokens"}``.
    Row ``i`` samples with seed ``cfg.seed + i`` (only when ``--temperature`` > 0).

    Returns:
        The completions file.

    Raises:
        BadInputError: Bad artifact, data file, column, setting, or a prompt that does not fit.
        IntegrityError: An artifact file does not match its manifest.
    """
    from deploykit.predict import write_rows

    # One caller decoding back to back: idle threads may spin (the Generator's ``spin``).
    generator = Generator(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_size=cfg.max_batch_size,
                          max_cache_tokens=cfg.max_batch_tokens, spin=True)

    def complete(prompts: list[str], first: int) -> list[dict]:
        return [{"completion": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens}
                for c in generator.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                            seed=cfg.seed + first)]

    out, n = write_rows(cfg, complete)
    log.info("wrote %d completions (%s, variant %s) to %s", n, generator.name, generator.variant, out)
    return out

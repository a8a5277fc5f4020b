"""``deploykit predict`` on a text-generation artifact: prompts in, completions out (JSONL).

Rows are read in chunks (``predict.read_texts``), each chunk generated on the iteration-level
scheduler (``deploykit.generator``), and one JSON line per row written, in input order, to a
temporary file renamed into place when every row is done. Torch-free, like the classifier path.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from itertools import islice
from pathlib import Path

from deploykit.config import PredictConfig
from deploykit.generator import Generator

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
    from tqdm import tqdm

    from deploykit.predict import _count_rows, read_texts

    generator = Generator(cfg.artifact, cfg.variant, threads=cfg.threads, max_batch_size=cfg.max_batch_size,
                          max_cache_tokens=cfg.max_batch_tokens)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = read_texts(cfg.data, cfg.text_column)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh, \
                tqdm(total=_count_rows(Path(cfg.data)), unit="prompt", desc="predict") as bar:
            while chunk := list(islice(prompts, cfg.chunk_size)):
                for c in generator.generate(chunk, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                            seed=cfg.seed + n):
                    fh.write(json.dumps({"row": n, "completion": c.text, "finish_reason": c.finish_reason,
                                         "prompt_tokens": c.prompt_tokens,
                                         "completion_tokens": c.completion_tokens}, ensure_ascii=False) + "\n")
                    n += 1
                bar.update(len(chunk))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d completions (%s, variant %s) to %s", n, generator.name, generator.variant, out)
    return out

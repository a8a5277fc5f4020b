"""text-generation's parity: every exported variant, run by the serving ``Generator``, against the
PyTorch checkpoint on the held-out prompts.

Per variant (one ``deploykit.export.parity.ParityResult``): the tokenizer (the artifact's ids must
equal the checkpoint tokenizer's), the first step's logits (max |diff|), the share of prompts whose
first greedy tokens equal PyTorch's ``generate``, BLEU/chrF of the generations against the
references compared with PyTorch's own, and how far a prompt's logits move with batch mates
(``batch_independence``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit import data
from deploykit.config import ParityConfig
from deploykit.errors import BadInputError
from deploykit.export.parity import Column, ParityResult, batches, fmt
from deploykit.manifest import Manifest, ParityRows, rows_sha256
from deploykit.tasks.generation import data as gen_data
from deploykit.tasks.generation import decoding, prompts
from deploykit.tasks.generation.runtime import Generator, Sampling

MIXED_BATCH = 8  # rows per batch in the batch-independence check (the service's typical decode batch)


# --- the held-out prompts --------------------------------------------------------------------

@dataclass
class Prompts:
    """Held-out prompts (text or chat messages), their token ids as training fed them (left
    truncated to its max length), and the reference completions."""

    prompts: list[Any]
    ids: list[list[int]]
    references: list[str]
    source: str
    split: str
    data_sha256: str
    columns: dict[str, str | None]

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """The manifest's ``evaluation`` record of these prompts (verify re-checks them)."""
        texts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in self.prompts]
        columns = {k: v for k, v in self.columns.items() if v is not None}
        return ParityRows(source=self.source, split=self.split, n=len(self.prompts), batch_sizes=tuple(batch_sizes),
                          columns=columns, sha256=rows_sha256(texts, self.references))


def load_prompts(cfg: ParityConfig, train_cfg: Any, tokenizer: Any) -> Prompts:
    """Rebuild the checkpoint's split of prompts (same seed and ratios) and tokenize them as training did.

    Raises:
        BadInputError: Bad data source or columns, or no prompts.
    """
    dcfg = data.rebuild_config(train_cfg, **data.held_out_options(cfg))
    pairs, sha = gen_data.held_out(dcfg, cfg.split)
    n = len(pairs) if cfg.max_eval_samples is None else min(len(pairs), cfg.max_eval_samples)
    if n == 0:
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no prompts to check parity on")
    pairs = gen_data.Pairs(pairs.prompts[:n], pairs.completions[:n])
    examples = prompts.encode(prompts.prepare_tokenizer(tokenizer, "the checkpoint"), pairs, dcfg.max_length)
    source = dcfg.data if not Path(dcfg.data).exists() else str(Path(dcfg.data).resolve())
    chat = not isinstance(pairs.prompts[0], str)
    columns = {"prompt_column": None if chat else dcfg.prompt_column,
               "completion_column": None if chat else dcfg.completion_column,
               "messages_column": dcfg.messages_column if chat else None}
    return Prompts(list(pairs.prompts), examples.prompts(), list(pairs.completions), source, cfg.split, sha, columns)


# --- the PyTorch reference -------------------------------------------------------------------

@dataclass
class Reference:
    """PyTorch's first-step logits and greedy tokens of every prompt, and its text metrics."""

    logits: np.ndarray
    tokens: list[list[int]]
    texts: list[str]
    metrics: dict[str, Any]


def reference(model: Any, tokenizer: Any, held: Prompts, tokens: int, eos: Sequence[int]) -> Reference:
    """PyTorch's answers on the held-out prompts: each prompt's last-position logits (unpadded)
    and ``generate``'s greedy tokens (batched, left padded, up to the first EOS)."""
    import torch
    from deploykit.progress import bar as progress_bar

    rows = []
    with torch.inference_mode():
        for ids in progress_bar(held.ids, desc="pytorch first step", unit="prompt", leave=False):
            rows.append(model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy())
    new = decoding.generate(model, tokenizer, held.ids, max_new_tokens=tokens, eos_token_ids=eos, progress=True)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return Reference(np.stack(rows), new, texts, _text_metrics(texts, held.references))


def _text_metrics(texts: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    metrics = decoding.text_metrics(texts, references)
    return {k: metrics[k] for k in ("bleu", "chrf", "exact_match", "n")}


# --- parity of one variant -------------------------------------------------------------------

def bounds_for(precision: str, cfg: ParityConfig) -> dict[str, float]:
    """The gates of a precision: fp32 graphs match PyTorch's greedy tokens on every prompt; INT8
    ones on most prompts over fewer tokens, losing at most a little BLEU."""
    if precision == "int8":
        return {"tokens": cfg.int8_generation_tokens, "min_prompt_agreement": cfg.int8_min_prompt_agreement,
                "max_bleu_drop": cfg.int8_max_bleu_drop}
    return {"tokens": cfg.generation_tokens, "min_prompt_agreement": cfg.fp32_min_agreement}


def agreement(tokens: Sequence[Sequence[int]], reference_tokens: Sequence[Sequence[int]], n: int) -> float:
    """Share of prompts whose first ``n`` generated tokens (fewer if EOS came first) equal the reference's."""
    same = [list(a[:n]) == list(b[:n]) for a, b in zip(tokens, reference_tokens)]
    return float(np.mean(same)) if same else 0.0


def check_variant(folder: Path, manifest: Manifest, name: str, held: Prompts, ref: Reference, tokenizer: Any,
                  cfg: ParityConfig) -> ParityResult:
    """Compare one variant, run by the serving ``Generator``, with PyTorch: tokenizer, first-step
    logits, greedy tokens (in batches cycling through ``--batch-sizes``), BLEU/chrF.

    Returns:
        The result; ``failures`` lists every missed bound.
    """
    precision = manifest.variants[name].precision
    # The numbers' order is the manifest's (a failed interface leaves them not a number).
    result = ParityResult(name, precision, {"first_step_max_abs_diff": float("nan"), "token_agreement": 0.0,
                                            "tokens_compared": 0, "tokenizer_mismatches": 0,
                                            "bleu_drop": float("nan"), "chrf_drop": float("nan")},
                          bounds=bounds_for(precision, cfg))
    n = result.numbers
    try:
        gen = Generator.of_variant(folder, manifest, name, max_batch_size=max(cfg.batch_size_list))
    except BadInputError as exc:
        result.fail("interface", str(exc), "the manifest's inputs, outputs and cache")
        return result
    # The artifact's tokenizer must give the checkpoint tokenizer's ids, or serving answers other prompts.
    n["tokenizer_mismatches"] = sum(gen.encode(p) != _hf_ids(tokenizer, p) for p in held.prompts)
    if n["tokenizer_mismatches"]:
        result.fail("tokenizer", n["tokenizer_mismatches"], 0)
    diffs = []
    for ids, row in zip(held.ids, ref.logits):
        width = len(ids)
        logits, _ = gen.forward(np.array([ids], np.int64), np.ones((1, width), np.int64),
                                np.arange(width, dtype=np.int64)[None], gen.empty_cache(1))
        diffs.append(float(np.abs(logits[0].astype(np.float64) - row).max()))
    n["first_step_max_abs_diff"] = max(diffs)
    result.batch_independence = batch_independence(gen, held.ids)
    tokens: list[list[int]] = []
    texts: list[str] = []
    for part in batches(len(held.ids), cfg.batch_size_list):
        for c in gen.generate_ids(held.ids[part], Sampling(max_new_tokens=cfg.generation_tokens)):
            tokens.append(c.token_ids)
            texts.append(c.text)
    b = result.bounds
    n["tokens_compared"] = int(b["tokens"])
    n["token_agreement"] = agreement(tokens, ref.tokens, n["tokens_compared"])
    result.metrics = _text_metrics(texts, held.references)
    n["bleu_drop"] = ref.metrics["bleu"] - result.metrics["bleu"]
    n["chrf_drop"] = ref.metrics["chrf"] - result.metrics["chrf"]
    if n["token_agreement"] < b["min_prompt_agreement"]:
        result.fail("token_agreement", n["token_agreement"], b["min_prompt_agreement"],
                    b["min_prompt_agreement"] - n["token_agreement"])
    if "max_bleu_drop" in b and n["bleu_drop"] > b["max_bleu_drop"]:
        result.fail("bleu_drop", n["bleu_drop"], b["max_bleu_drop"], n["bleu_drop"] - b["max_bleu_drop"])
    return result


def batch_independence(gen: Any, prompts: Sequence[Sequence[int]], batch_size: int = MIXED_BATCH) -> dict[str, Any]:
    """How far a prompt's logits move with its batch mates: the prompts cut to one length (their
    last tokens, so no padding is involved), each alone against the same rows in batches of
    ``batch_size``, over the prompt step and one cached decoding step (the two shapes the
    weight-only INT8 kernels see). Float graphs and per-row activation quantization give 0.

    Returns:
        The manifest's ``parity.batch_independence``: ``{"max_abs_diff", "mean_abs_diff", "rows",
        "mixed_batch_size", "prompt_tokens"}`` (the classifier's record, read by
        ``Variant.batch_independent``).
    """
    width = max(1, min(len(p) for p in prompts))
    rows = np.array([list(p)[-width:] for p in prompts], np.int64)

    def two_steps(part: np.ndarray) -> np.ndarray:
        n = len(part)
        first, cache = gen.forward(part, np.ones_like(part), np.tile(np.arange(width, dtype=np.int64), (n, 1)),
                                   gen.empty_cache(n))
        second, _ = gen.forward(part[:, :1].copy(), np.ones((n, width + 1), np.int64),
                                np.full((n, 1), width, np.int64), cache)
        return np.stack([first, second], axis=1)

    alone = np.concatenate([two_steps(rows[i:i + 1]) for i in range(len(rows))])
    mixed = np.concatenate([two_steps(rows[s:s + batch_size]) for s in range(0, len(rows), batch_size)])
    diff = np.abs(alone.astype(np.float64) - mixed)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "rows": len(rows),
            "mixed_batch_size": batch_size, "prompt_tokens": width}


def _hf_ids(tokenizer: Any, prompt: Any) -> list[int]:
    """The checkpoint tokenizer's ids of a prompt (untruncated), as training built them."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def columns(reference_metrics: dict[str, Any]) -> list[Column]:
    """The parity table's columns: first-step logits, prompts whose greedy tokens equal PyTorch's,
    BLEU, chrF and batch dependence."""
    return [Column("first-step max|diff|", lambda r: fmt(r.numbers.get("first_step_max_abs_diff"))),
            Column("prompts equal", lambda r: fmt(r.numbers.get("token_agreement"))),
            Column("tokens", lambda r: str(r.numbers.get("tokens_compared"))),
            Column("BLEU", lambda r: f"{r.metrics.get('bleu', float('nan')):.2f}", f"{reference_metrics['bleu']:.2f}"),
            Column("chrF", lambda r: f"{r.metrics.get('chrf', float('nan')):.2f}", f"{reference_metrics['chrf']:.2f}"),
            Column("batch mates |diff|", lambda r: fmt(r.batch_independence.get("max_abs_diff")))]

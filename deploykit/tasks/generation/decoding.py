"""Scoring of decoder-only language models with PyTorch, shared by training and evaluation.

* ``completion_loss``: next-token cross-entropy on the completion tokens only (the loss the loop
  trains with);
* ``token_nll``: each row's summed negative log-likelihood of its completion and its token
  count (validation loss and perplexity);
* ``generate``: batched greedy decoding with left padding;
* ``text_metrics``: corpus BLEU and chrF from ``sacrebleu`` (with their signatures), exact match
  and lengths.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from deploykit.tasks.generation.prompts import IGNORE_INDEX


def completion_loss(logits: Any, labels: Any, reduction: str = "mean") -> Any:
    """Next-token cross-entropy over the labelled positions (position t predicts token t + 1).

    Args:
        logits: [batch, time, vocab] model outputs.
        labels: [batch, time] token ids, -100 where the loss skips (prompt, padding).
        reduction: ``mean`` over labelled tokens, or ``none`` for [batch, time - 1] losses.

    Returns:
        The loss tensor.
    """
    import torch.nn.functional as F

    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    loss = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)
    return loss if reduction != "none" else loss.view(shifted_labels.shape)


def _by_length(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (less padding); callers put results back in order."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def token_nll(model: Any, collate: Any, rows: Sequence[dict[str, list[int]]], *, batch_size: int = 32,
              bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each row's summed negative log-likelihood of its labelled tokens, and their count.

    Args:
        model: A causal language model.
        collate: The training collator (right padding, -100 labels).
        rows: Examples from ``prompts.encode``.
        batch_size: Rows per forward pass.
        bf16: Run under bfloat16 autocast.

    Returns:
        (float64 NLL sums, int64 token counts), one entry per row.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = np.zeros(len(rows)), np.zeros(len(rows), dtype=np.int64)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for index in _by_length([len(r["input_ids"]) for r in rows], batch_size):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in index]).items()}
            labels = batch.pop("labels")
            losses = completion_loss(model(**batch).logits, labels, reduction="none")
            nll[index] = losses.sum(-1).double().cpu().numpy()
            count[index] = (labels[:, 1:] != IGNORE_INDEX).sum(-1).cpu().numpy()
    model.train(was_training)
    return nll, count


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, max_new_tokens: int,
             batch_size: int = 32, bf16: bool = False, progress: bool = False,
             eos_token_ids: Sequence[int] | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts, batched with left padding.

    Args:
        model: A causal language model.
        tokenizer: Its tokenizer (pad and EOS ids).
        prompts: Each prompt's token ids.
        max_new_tokens: Most tokens generated per prompt.
        batch_size: Prompts per ``generate`` call.
        bf16: Run under bfloat16 autocast.
        progress: Show a progress bar.
        eos_token_ids: The ids that end a completion (default: the tokenizer's EOS).

    Returns:
        Each prompt's new tokens, up to (not including) the first EOS.
    """
    import torch
    from deploykit.progress import bar as progress_bar
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    ends = list(eos_token_ids) if eos_token_ids else [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    # An explicit config: greedy whatever sampling settings the model's generation_config holds.
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=ends,
                              pad_token_id=pad, bos_token_id=model.generation_config.bos_token_id)
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    batches = _by_length([len(p) for p in prompts], batch_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for index in progress_bar(batches, desc="generate", disable=not progress, leave=False):
            width = max(len(prompts[i]) for i in index)
            # Left padding: every prompt ends at the same position, where generation starts.
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in index], device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in index],
                                device=device)
            new = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
            for i, tokens in zip(index, new.tolist()):
                stops = [j for j, t in enumerate(tokens) if t in ends]
                out[i] = tokens[:stops[0]] if stops else tokens
    model.train(was_training)
    return out


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (effective n-gram order, as sacrebleu recommends for sentences)."""
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(hypothesis, [reference]).score)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu, default settings, signatures recorded) and exact match.

    Args:
        hypotheses: Generated texts.
        references: The reference completions, in the same order.

    Returns:
        ``bleu``, ``chrf`` (0-100), ``exact_match`` (0-1, after stripping surrounding
        whitespace), ``n`` and ``sacrebleu`` ({bleu, chrf}: the metric signatures).
    """
    from sacrebleu.metrics import BLEU, CHRF

    hyps = [h.strip() for h in hypotheses]
    refs = [r.strip() for r in references]
    bleu, chrf = BLEU(), CHRF()
    return {"bleu": float(bleu.corpus_score(hyps, [refs]).score),
            "chrf": float(chrf.corpus_score(hyps, [refs]).score),
            "exact_match": float(np.mean([h == r for h, r in zip(hyps, refs)])) if hyps else 0.0,
            "n": len(hyps),
            "sacrebleu": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}}


def loss_metrics(nll: np.ndarray, count: np.ndarray) -> dict[str, float]:
    """Token-weighted completion loss and its perplexity."""
    loss = float(nll.sum() / max(int(count.sum()), 1))
    return {"loss": loss, "perplexity": float(math.exp(min(loss, 700.0)))}

"""What the one training loop (``deploykit.train``) calls for text-generation.

``AutoModelForCausalLM``; next-token cross-entropy on the completion tokens only; completion
loss and perplexity, plus BLEU, chrF and exact match of greedy generations when ``--metric bleu``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deploykit.config import TrainConfig
from deploykit.tasks.generation import data
from deploykit.tasks.generation import decoding as generation
from deploykit.tasks.generation import prompts

log = logging.getLogger(__name__)


class Training:
    """text-generation: a completion per prompt, by a decoder-only language model (what the one
    training loop calls)."""

    what = "causal language model"
    summary = ("loss", "perplexity", "bleu", "chrf", "exact_match")
    new_head = False  # lm_head is pretrained

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.splits = cfg, data.load_splits(cfg)  # the same seed gives the same splits on every rank

    def describe(self) -> str:
        return "prompt/completion pairs"

    def from_pretrained(self, source: str) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
        if model.config.is_encoder_decoder:
            raise ValueError(f"it is an encoder-decoder ({model.config.model_type}); text-generation "
                             f"fine-tunes decoder-only models (Llama, Qwen2, GPT-2, ...)")
        return model

    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None:
        """Tokenize the training and validation pairs once (prompts masked); pack if asked."""
        cfg, splits = self.cfg, self.splits
        prompts.prepare_tokenizer(tokenizer, cfg.model)
        # Saved with the checkpoint, so later stages stop where training taught the model to: at
        # the tokenizer's EOS (first), or any end token the model already had (Llama 3 has two).
        config = model.generation_config
        known = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        ends = [tokenizer.eos_token_id] + [t for t in known if t is not None and t != tokenizer.eos_token_id]
        config.eos_token_id = ends if len(ends) > 1 else ends[0]
        config.pad_token_id = tokenizer.pad_token_id
        train = prompts.encode(tokenizer, splits.train, cfg.max_length)
        self.validation = prompts.encode(tokenizer, splits.validation, cfg.max_length)
        prompts.report_truncation(train, "train", cfg.max_length)
        prompts.report_truncation(self.validation, "validation", cfg.max_length)
        self.train_rows = prompts.pack(train.rows, cfg.max_length) if cfg.packing else train.rows
        if cfg.packing:
            log.info("packing: %d training rows in %d sequences of at most %d tokens", len(train.rows),
                     len(self.train_rows), cfg.max_length)
        self.collate = prompts.make_collator(tokenizer)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        labels = batch.pop("labels")
        return generation.completion_loss(model(**batch).logits, labels)

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        cfg = self.cfg
        nll, count = generation.token_nll(model, self.collate, self.validation.rows,
                                          batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
        metrics: dict[str, Any] = {**generation.loss_metrics(nll, count), "n": len(self.validation.rows)}
        if cfg.metric == "bleu":
            new = generation.generate(model, tokenizer, self.validation.prompts(), max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            metrics.update(generation.text_metrics(texts, self.splits.validation.completions))
        return metrics


# --- the checkpoint ---------------------------------------------------------------------------

def model_class() -> Any:
    """The transformers class that loads a text-generation checkpoint."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def check_checkpoint(path: Path) -> None:
    """A causal language model's checkpoint needs nothing beyond the shared files."""

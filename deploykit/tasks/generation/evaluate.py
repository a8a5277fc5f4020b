"""text-generation's evaluation: greedy decoding of the held-out prompts, scored against their
completions (the shared stage, ``deploykit.evaluation``, writes the folder).

    metrics.json   bleu, chrf (sacrebleu, with signatures), exact_match, loss, perplexity,
                   generated_tokens, reference_tokens, length_ratio, n, by_length (prompt
                   tokens), by_slice
    errors.jsonl   prompt, reference, generated, sentence_bleu - the lowest sentence BLEU first
    length.png     BLEU and exact match per prompt-length bucket
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint
from deploykit.config import DataConfig, EvalConfig
from deploykit.evaluation import length_groups, length_plot, slice_groups, slice_table
from deploykit.tasks.generation import decoding, prompts
from deploykit.tasks.generation.data import Pairs, held_out

log = logging.getLogger(__name__)


class Evaluation:
    """Greedy generations for a decoder's held-out prompts (see ``deploykit.evaluation.Evaluation``)."""

    def __init__(self, cfg: EvalConfig, ckpt: Path, dcfg: DataConfig) -> None:
        self.cfg, self.checkpoint, self.dcfg = cfg, ckpt, dcfg

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg, dcfg = self.cfg, self.dcfg
        pairs, _ = held_out(dcfg, cfg.split, cfg.slice_column)
        model, tokenizer = checkpoint.load_model(self.checkpoint)
        prompts.prepare_tokenizer(tokenizer, str(self.checkpoint))
        examples = prompts.encode(tokenizer, pairs, dcfg.max_length)
        prompts.report_truncation(examples, cfg.split, dcfg.max_length)
        log.info("generating for %d prompts of %s (%s)", len(pairs), dcfg.data, cfg.split)
        nll, count = decoding.token_nll(model, prompts.make_collator(tokenizer), examples.rows,
                                        batch_size=cfg.batch_size)
        new = decoding.generate(model, tokenizer, examples.prompts(), max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.batch_size, progress=True)
        hyps = tokenizer.batch_decode(new, skip_special_tokens=True)
        refs = pairs.completions
        reference_tokens = [len(ids) for ids in tokenizer(list(refs), add_special_tokens=False)["input_ids"]]
        generated_tokens = [len(ids) for ids in new]
        metrics = {**decoding.text_metrics(hyps, refs), **decoding.loss_metrics(nll, count),
                   "generated_tokens": float(np.mean(generated_tokens)),
                   "reference_tokens": float(np.mean(reference_tokens)),
                   "length_ratio": sum(generated_tokens) / max(sum(reference_tokens), 1),
                   "truncated_prompts": examples.truncated_prompts, "max_new_tokens": cfg.max_new_tokens}
        metrics["by_length"] = [{"tokens": tokens, **_generation_group(index, hyps, refs, nll, count)}
                                for tokens, index in length_groups(examples.prompt_lengths, dcfg.max_length).items()]
        if cfg.slice_column:
            metrics["slice_column"] = cfg.slice_column
            metrics["by_slice"] = {value: _generation_group(index, hyps, refs, nll, count)
                                   for value, index in slice_groups(pairs.slices).items()}
        return metrics, worst_generations(pairs, hyps, cfg.max_errors)

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        length_plot(folder, metrics["by_length"], [("bleu", "BLEU / 100", 0.01), ("exact_match", "exact match", 1.0)],
                    "prompt length (tokens)")

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        return _generation_report(metrics, errors)


def summary(metrics: dict[str, Any]) -> str:
    """The split, its prompts, BLEU, chrF, exact match, loss and perplexity on one line."""
    return (f"{metrics['split']} ({metrics['n']} prompts): BLEU {metrics['bleu']:.2f}, chrF {metrics['chrf']:.2f}, "
            f"exact match {metrics['exact_match']:.4f}, loss {metrics['loss']:.4f}, perplexity "
            f"{metrics['perplexity']:.3f}")


def _generation_group(index: np.ndarray, hyps: list[str], refs: list[str], nll: np.ndarray,
                      count: np.ndarray) -> dict[str, Any]:
    """BLEU, chrF, exact match, loss and n of a subset of the rows."""
    text = decoding.text_metrics([hyps[i] for i in index], [refs[i] for i in index])
    loss = decoding.loss_metrics(nll[index], count[index])
    return {"n": len(index), **{k: text[k] for k in ("bleu", "chrf", "exact_match")}, "loss": loss["loss"]}


def _prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """A prompt as one line of text for errors.jsonl and the report (a chat: its messages)."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(f"<{m['role']}> {m['content']}" for m in prompt)


def worst_generations(pairs: Pairs, hyps: list[str], limit: int) -> list[dict[str, Any]]:
    """The rows whose generation misses its reference, lowest sentence BLEU first."""
    rows = [{"prompt": _prompt_text(pairs.prompts[i]), "reference": pairs.completions[i].strip(),
             "generated": hyps[i].strip(), "sentence_bleu": round(decoding.sentence_bleu(hyps[i], pairs.completions[i]), 4)}
            for i in range(len(hyps)) if hyps[i].strip() != pairs.completions[i].strip()]
    rows.sort(key=lambda row: row["sentence_bleu"])
    return rows[:limit]


def _cell(text: str, width: int = 80) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:width]


def _generation_report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    keys = ("bleu", "chrf", "exact_match", "loss")
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} prompts, greedy decoding, "
             f"at most {metrics['max_new_tokens']} new tokens).", "",
             "| BLEU | chrF | exact match | loss | perplexity | generated / reference tokens |",
             "|---|---|---|---|---|---|",
             f"| {metrics['bleu']:.2f} | {metrics['chrf']:.2f} | {metrics['exact_match']:.4f} | {metrics['loss']:.4f} | "
             f"{metrics['perplexity']:.3f} | {metrics['generated_tokens']:.1f} / {metrics['reference_tokens']:.1f} "
             f"({metrics['length_ratio']:.2f}) |", "",
             f"sacrebleu signatures: BLEU `{metrics['sacrebleu']['bleu']}`, chrF `{metrics['sacrebleu']['chrf']}`.",
             "", "## By prompt length", "", "| prompt tokens | n | BLEU | chrF | exact match | loss |",
             "|---|---|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | " + " | ".join(f"{b[k]:.4f}" for k in keys) + " |")
    lines += slice_table(metrics, keys)
    lines += ["", "![length](length.png)", "",
              f"## Worst cases: lowest sentence BLEU ({len(errors)} in errors.jsonl)", "",
              "| prompt | reference | generated | sentence BLEU |", "|---|---|---|---|"]
    for e in errors[:10]:
        lines.append(f"| {_cell(e['prompt'])} | {_cell(e['reference'])} | {_cell(e['generated'])} | "
                     f"{e['sentence_bleu']:.2f} |")
    return "\n".join(lines) + "\n"

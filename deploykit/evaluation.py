"""Evaluation of a checkpoint: metrics, per-class report, length buckets, slices, error cases, plots.

``deploykit evaluate CHECKPOINT --out DIR`` writes, atomically, for a text-classification checkpoint:

    metrics.json   accuracy, macro_f1, weighted_f1, per_class, n, by_length, by_slice, split, checkpoint
    errors.jsonl   text, gold, predicted, confidence - the most confident mistakes first
    confusion.png  the confusion matrix
    length.png     accuracy and macro-F1 per input-length bucket
    report.md      a short human-readable summary of all of the above

and for a text-generation checkpoint (greedy decoding of the held-out prompts):

    metrics.json   bleu, chrf (sacrebleu, with signatures), exact_match, loss, perplexity,
                   generated_tokens, reference_tokens, length_ratio, n, by_length (prompt
                   tokens), by_slice, split, checkpoint
    errors.jsonl   prompt, reference, generated, sentence_bleu - the lowest sentence BLEU first
    length.png     BLEU and exact match per prompt-length bucket
    report.md      the summary

``--slice-column COL`` adds ``by_slice``: every metric per value of a column of the data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint, data
from deploykit import tasks
from deploykit.config import GENERATION, DataConfig, EvalConfig
from deploykit.tasks.classification.scoring import classification_metrics, predict_logits, softmax

log = logging.getLogger(__name__)

LENGTH_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _rows(cfg: EvalConfig, label_names: list[str]) -> tuple[Any, DataConfig]:
    """The rows to score (classification: label ids mapped onto the checkpoint's label map)."""
    dcfg = data.rebuild_config(checkpoint.train_config(cfg.checkpoint), task=tasks.checkpoint_task(cfg.checkpoint),
                               data=cfg.data,
                               text_column=cfg.text_column, label_column=cfg.label_column,
                               prompt_column=cfg.prompt_column, completion_column=cfg.completion_column,
                               messages_column=cfg.messages_column)
    if dcfg.task == GENERATION:
        from deploykit.tasks.generation.data import held_out

        return held_out(dcfg, cfg.split, cfg.slice_column)[0], dcfg
    from deploykit.tasks.classification.data import held_out

    rows, _ = held_out(dcfg, cfg.split, label_names, cfg.slice_column)
    return rows, dcfg


def length_groups(lengths: list[int], max_length: int) -> dict[str, np.ndarray]:
    """Row indices per bucket of length in tokens ("lo-hi"), non-empty buckets only, shortest first."""
    edges = [0] + [e for e in LENGTH_EDGES if e < max_length] + [max_length + 1]
    lengths_arr = np.array(lengths)
    groups = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        index = np.flatnonzero((lengths_arr >= lo) & (lengths_arr < hi))
        if len(index):
            groups[f"{lo}-{hi - 1}"] = index
    return groups


def slice_groups(slices: list[str] | None) -> dict[str, np.ndarray]:
    """Row indices per value of the slice column, values sorted (none without a slice column)."""
    if slices is None:
        return {}
    values = np.array(slices, dtype=object)
    return {value: np.flatnonzero(values == value) for value in sorted(set(slices))}


def length_buckets(lengths: list[int], gold: list[int], predicted: list[int],
                   label_names: list[str], max_length: int) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 per bucket of input length in tokens.

    Returns:
        One dict per non-empty bucket: tokens (a "lo-hi" range), n, accuracy, macro_f1.
    """
    gold_arr, pred_arr = np.array(gold), np.array(predicted)
    buckets = []
    for tokens, index in length_groups(lengths, max_length).items():
        m = classification_metrics(gold_arr[index].tolist(), pred_arr[index].tolist(), label_names)
        buckets.append({"tokens": tokens, "n": len(index), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
    return buckets


def classification_slices(slices: list[str] | None, gold: list[int], predicted: list[int],
                          label_names: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1, weighted-F1 and n per value of the slice column."""
    gold_arr, pred_arr = np.array(gold), np.array(predicted)
    out = {}
    for value, index in slice_groups(slices).items():
        m = classification_metrics(gold_arr[index].tolist(), pred_arr[index].tolist(), label_names)
        out[value] = {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
    return out


def error_cases(texts: list[str], gold: list[int], probs: np.ndarray, label_names: list[str],
                limit: int) -> list[dict[str, Any]]:
    """The misclassified rows, most confident mistakes first."""
    predicted = probs.argmax(-1)
    wrong = [i for i in range(len(texts)) if predicted[i] != gold[i]]
    wrong.sort(key=lambda i: -probs[i, predicted[i]])
    return [{"text": texts[i], "gold": label_names[gold[i]], "predicted": label_names[predicted[i]],
             "confidence": round(float(probs[i, predicted[i]]), 6)} for i in wrong[:limit]]


def _plots(out: Path, gold: list[int], predicted: list[int], label_names: list[str],
           buckets: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(gold, predicted, labels=list(range(len(label_names))),
                                            display_labels=label_names, ax=ax, colorbar=False)
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(buckets))
    ax.bar(x - 0.2, [b["accuracy"] for b in buckets], 0.4, label="accuracy")
    ax.bar(x + 0.2, [b["macro_f1"] for b in buckets], 0.4, label="macro-F1")
    ax.set_xticks(x, [f"{b['tokens']}\n(n={b['n']})" for b in buckets])
    ax.set_xlabel("input length (tokens)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=110)
    plt.close(fig)


def _report(metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    lines = [f"# Evaluation of {metrics['checkpoint']}", "",
             f"Split: `{metrics['split']}` of `{metrics['data']}` ({metrics['n']} rows).", "",
             "| accuracy | macro-F1 | weighted-F1 |", "|---|---|---|",
             f"| {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} | {metrics['weighted_f1']:.4f} |", "",
             "## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "## By input length", "", "| tokens | n | accuracy | macro-F1 |", "|---|---|---|---|"]
    for b in metrics["by_length"]:
        lines.append(f"| {b['tokens']} | {b['n']} | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    lines += _slice_table(metrics, ("accuracy", "macro_f1", "weighted_f1"))
    lines += ["", "![confusion](confusion.png) ![length](length.png)", "",
              f"## Most confident mistakes ({len(errors)} in errors.jsonl)", "",
              "| text | gold | predicted | confidence |", "|---|---|---|---|"]
    for e in errors[:10]:
        text = e["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {text[:100]} | {e['gold']} | {e['predicted']} | {e['confidence']:.3f} |")
    return "\n".join(lines) + "\n"


def _slice_table(metrics: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The report's per-slice section (nothing without --slice-column)."""
    if "by_slice" not in metrics:
        return []
    lines = ["", f"## By {metrics['slice_column']}", "",
             f"| {metrics['slice_column']} | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for value, m in metrics["by_slice"].items():
        lines.append(f"| {value} | {m['n']} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return lines


def _write(out: str, metrics: dict[str, Any], errors: list[dict[str, Any]], plots: Any, report: str) -> None:
    """The evaluation folder, atomically."""
    with checkpoint.atomic_folder(out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        with open(tmp / "errors.jsonl", "w") as fh:
            for row in errors:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        plots(tmp)
        (tmp / "report.md").write_text(report)


def run(cfg: EvalConfig) -> Path:
    """Score a checkpoint on a split and write the evaluation folder.

    Args:
        cfg: The evaluation config (see ``deploykit evaluate --help``).

    Returns:
        The output folder.

    Raises:
        BadInputError: Not a checkpoint, or a bad data source, split or column.
    """
    ckpt = checkpoint.validate(cfg.checkpoint)
    if tasks.checkpoint_task(ckpt) == GENERATION:
        return _run_generation(cfg, ckpt)
    from deploykit.tasks.classification.train import checkpoint_labels

    label_names = checkpoint_labels(ckpt)
    split, data_cfg = _rows(cfg, label_names)
    model, tokenizer = checkpoint.load_model(ckpt)
    log.info("scoring %d rows of %s (%s)", len(split), data_cfg.data, cfg.split)
    logits = predict_logits(model, tokenizer, split.texts, max_length=data_cfg.max_length,
                            batch_size=cfg.batch_size, progress=True)
    probs = softmax(logits)
    predicted = probs.argmax(-1).tolist()
    lengths = [len(ids) for ids in tokenizer(split.texts, truncation=True, max_length=data_cfg.max_length)["input_ids"]]
    metrics = classification_metrics(split.labels, predicted, label_names)
    metrics["by_length"] = length_buckets(lengths, split.labels, predicted, label_names, data_cfg.max_length)
    if cfg.slice_column:
        metrics["slice_column"] = cfg.slice_column
        metrics["by_slice"] = classification_slices(split.slices, split.labels, predicted, label_names)
    metrics.update(split=cfg.split, data=data_cfg.data, checkpoint=str(ckpt))
    errors = error_cases(split.texts, split.labels, probs, label_names, cfg.max_errors)
    _write(cfg.out, metrics, errors,
           lambda tmp: _plots(tmp, split.labels, predicted, label_names, metrics["by_length"]),
           _report(metrics, errors))
    log.info("%s: accuracy %.4f, macro-F1 %.4f on %d rows -> %s", cfg.split, metrics["accuracy"],
             metrics["macro_f1"], metrics["n"], cfg.out)
    return Path(cfg.out)


# --- text-generation -------------------------------------------------------------------------

def _generation_group(index: np.ndarray, hyps: list[str], refs: list[str], nll: np.ndarray,
                      count: np.ndarray) -> dict[str, Any]:
    """BLEU, chrF, exact match, loss and n of a subset of the rows."""
    from deploykit.tasks.generation import decoding as generation

    text = generation.text_metrics([hyps[i] for i in index], [refs[i] for i in index])
    loss = generation.loss_metrics(nll[index], count[index])
    return {"n": len(index), **{k: text[k] for k in ("bleu", "chrf", "exact_match")}, "loss": loss["loss"]}


def _prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """A prompt as one line of text for errors.jsonl and the report (a chat: its messages)."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(f"<{m['role']}> {m['content']}" for m in prompt)


def worst_generations(pairs: Any, hyps: list[str], limit: int) -> list[dict[str, Any]]:
    """The rows whose generation misses its reference, lowest sentence BLEU first."""
    from deploykit.tasks.generation import decoding as generation

    rows = [{"prompt": _prompt_text(pairs.prompts[i]), "reference": pairs.completions[i].strip(),
             "generated": hyps[i].strip(), "sentence_bleu": round(generation.sentence_bleu(hyps[i], pairs.completions[i]), 4)}
            for i in range(len(hyps)) if hyps[i].strip() != pairs.completions[i].strip()]
    rows.sort(key=lambda row: row["sentence_bleu"])
    return rows[:limit]


def _generation_plot(out: Path, buckets: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(buckets))
    ax.bar(x - 0.2, [b["bleu"] / 100 for b in buckets], 0.4, label="BLEU / 100")
    ax.bar(x + 0.2, [b["exact_match"] for b in buckets], 0.4, label="exact match")
    ax.set_xticks(x, [f"{b['tokens']}\n(n={b['n']})" for b in buckets])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=110)
    plt.close(fig)


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
    lines += _slice_table(metrics, keys)
    lines += ["", "![length](length.png)", "",
              f"## Worst cases: lowest sentence BLEU ({len(errors)} in errors.jsonl)", "",
              "| prompt | reference | generated | sentence BLEU |", "|---|---|---|---|"]
    for e in errors[:10]:
        lines.append(f"| {_cell(e['prompt'])} | {_cell(e['reference'])} | {_cell(e['generated'])} | "
                     f"{e['sentence_bleu']:.2f} |")
    return "\n".join(lines) + "\n"


def _run_generation(cfg: EvalConfig, ckpt: Path) -> Path:
    """Greedy generations for the held-out prompts, scored against their completions."""
    from deploykit.tasks.generation import decoding as generation, prompts

    pairs, data_cfg = _rows(cfg, [])
    model, tokenizer = checkpoint.load_model(ckpt)
    prompts.prepare_tokenizer(tokenizer, str(ckpt))
    examples = prompts.encode(tokenizer, pairs, data_cfg.max_length)
    prompts.report_truncation(examples, cfg.split, data_cfg.max_length)
    log.info("generating for %d prompts of %s (%s)", len(pairs), data_cfg.data, cfg.split)
    nll, count = generation.token_nll(model, prompts.make_collator(tokenizer), examples.rows,
                                      batch_size=cfg.batch_size)
    new = generation.generate(model, tokenizer, examples.prompts(), max_new_tokens=cfg.max_new_tokens,
                              batch_size=cfg.batch_size, progress=True)
    hyps = tokenizer.batch_decode(new, skip_special_tokens=True)
    refs = pairs.completions
    reference_tokens = [len(ids) for ids in tokenizer(list(refs), add_special_tokens=False)["input_ids"]]
    generated_tokens = [len(ids) for ids in new]
    metrics = {**generation.text_metrics(hyps, refs), **generation.loss_metrics(nll, count),
               "generated_tokens": float(np.mean(generated_tokens)), "reference_tokens": float(np.mean(reference_tokens)),
               "length_ratio": sum(generated_tokens) / max(sum(reference_tokens), 1),
               "truncated_prompts": examples.truncated_prompts, "max_new_tokens": cfg.max_new_tokens}
    metrics["by_length"] = [{"tokens": tokens, **_generation_group(index, hyps, refs, nll, count)}
                            for tokens, index in length_groups(examples.prompt_lengths, data_cfg.max_length).items()]
    if cfg.slice_column:
        metrics["slice_column"] = cfg.slice_column
        metrics["by_slice"] = {value: _generation_group(index, hyps, refs, nll, count)
                               for value, index in slice_groups(pairs.slices).items()}
    metrics.update(split=cfg.split, data=data_cfg.data, checkpoint=str(ckpt))
    errors = worst_generations(pairs, hyps, cfg.max_errors)
    _write(cfg.out, metrics, errors, lambda tmp: _generation_plot(tmp, metrics["by_length"]),
           _generation_report(metrics, errors))
    log.info("%s: BLEU %.2f, chrF %.2f, exact match %.4f, loss %.4f on %d prompts -> %s", cfg.split,
             metrics["bleu"], metrics["chrf"], metrics["exact_match"], metrics["loss"], metrics["n"], cfg.out)
    return Path(cfg.out)

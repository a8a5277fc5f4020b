"""Evaluation of a checkpoint, written once: held-out rows in, an evaluation folder out.

``deploykit evaluate CHECKPOINT --out DIR`` rebuilds the checkpoint's held-out split (or scores
``--data``), and the checkpoint's task (its folder's ``evaluate.Evaluation``, found through the
task registry) scores it; this stage writes, atomically:

    metrics.json   the task's metrics (text-classification: accuracy, macro_f1, weighted_f1,
                   per_class, n; text-generation: bleu, chrf, exact_match, loss, perplexity, ...),
                   by_length (input-length buckets), by_slice (with --slice-column), split,
                   data, checkpoint
    errors.jsonl   the worst cases (the most confident mistakes; the lowest sentence BLEU)
    *.png          the task's plots
    report.md      a short human-readable summary of all of the above

``--slice-column COL`` adds ``by_slice``: every metric per value of a column of the data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from deploykit import checkpoint, data, tasks
from deploykit.config import DataConfig, EvalConfig, check_task

log = logging.getLogger(__name__)

LENGTH_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Evaluation(Protocol):
    """What this stage calls on the task (``deploykit/tasks/<task>/evaluate.py``'s ``Evaluation``,
    constructed with the config, the validated checkpoint and the data options of its rows; the
    module's ``summary(metrics)`` gives the headline line)."""

    def score(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics, with by_length and by_slice; the worst cases for errors.jsonl)."""

    def plots(self, folder: Path, metrics: dict[str, Any]) -> None:
        """Write the task's PNG plots into ``folder``."""

    def report(self, metrics: dict[str, Any], errors: list[dict[str, Any]]) -> str:
        """report.md."""


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


def length_plot(out: Path, buckets: list[dict[str, Any]], bars: list[tuple[str, str, float]], axis: str) -> None:
    """``length.png``: two (or more) metrics per length bucket, as grouped bars on a 0-1 scale.

    Args:
        out: The folder to write into.
        buckets: ``by_length`` rows (``tokens``, ``n`` and the metrics).
        bars: (metric key, legend label, scale factor) per bar of a bucket.
        axis: The x axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(buckets))
    width = 0.8 / len(bars)
    for i, (key, label, scale) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [b[key] * scale for b in buckets], width, label=label)
    ax.set_xticks(x, [f"{b['tokens']}\n(n={b['n']})" for b in buckets])
    ax.set_xlabel(axis)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "length.png", dpi=110)
    plt.close(fig)


def slice_table(metrics: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The report's per-slice section (nothing without --slice-column)."""
    if "by_slice" not in metrics:
        return []
    lines = ["", f"## By {metrics['slice_column']}", "",
             f"| {metrics['slice_column']} | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for value, m in metrics["by_slice"].items():
        lines.append(f"| {value} | {m['n']} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return lines


def _write(out: str, metrics: dict[str, Any], errors: list[dict[str, Any]], plots: Callable[[Path], None],
           report: str) -> None:
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
        BadInputError: Not a checkpoint, an option of another task, or a bad data source, split
            or column.
    """
    ckpt = checkpoint.validate(cfg.checkpoint)
    task = tasks.of_checkpoint(ckpt)
    check_task(cfg, task.name, f"{ckpt} is a {task.name} checkpoint")
    dcfg: DataConfig = data.rebuild_config(checkpoint.train_config(ckpt), task=task.name, split=cfg.split,
                                           **data.held_out_options(cfg))
    part = task.part("evaluate")
    evaluation: Evaluation = part.Evaluation(cfg, ckpt, dcfg)
    metrics, errors = evaluation.score()
    metrics.update(split=cfg.split, data=dcfg.data, checkpoint=str(ckpt))
    _write(cfg.out, metrics, errors, lambda tmp: evaluation.plots(tmp, metrics), evaluation.report(metrics, errors))
    log.info("%s -> %s", part.summary(metrics), cfg.out)
    return Path(cfg.out)


def summary(out: str | Path) -> str:
    """The headline line of an evaluation folder (what ``deploykit evaluate`` prints)."""
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    task = tasks.of_checkpoint(metrics["checkpoint"])
    return f"{task.part('evaluate').summary(metrics)} -> {out}/report.md"

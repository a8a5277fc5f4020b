"""text-classification's parity: every exported variant against the PyTorch checkpoint on held-out rows.

In the style of optimum's export validation: check the graph's inputs and output against the
manifest, then the output shape, then the values; collect every failure in one
``deploykit.export.parity.ParityResult``. The ONNX side runs the very ``Runtime`` that serves (its tokenizer
set-up, padding and feeds from the artifact's own ``tokenizer.json``), so what parity verifies
is what is served, and a mismatched tokenizer shows up here too. Rows are scored in batches
whose sizes cycle through ``--batch-sizes`` (batch 1 is unpadded, larger batches mix padded and
full rows), one model call per batch, so one pass covers several shapes. Each variant's batch
independence is measured too: every row alone against the same row in mixed batches (the
variant rule serves by default only a variant whose logits do not move with batch mates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit import data
from deploykit.config import DataConfig, ParityConfig, TrainConfig
from deploykit.errors import BadInputError
from deploykit.export.parity import Column, ParityResult, batches, fmt
from deploykit.manifest import Manifest, ParityRows, rows_sha256
from deploykit.tasks.classification import data as cls_data
from deploykit.tasks.classification.decisions import Decisions
from deploykit.tasks.classification.runtime import Runtime
from deploykit.tasks.classification.scoring import multi_label_metrics, ranking_metrics, score_metrics

log = logging.getLogger(__name__)

INT8_PRECISIONS = ("int8",)
# Rows per batch of the batch-independence check's shuffled pass (tweets of mixed lengths).
MIXED_BATCH = 32


@dataclass
class HeldOut:
    """The rows parity and metrics are computed on, with labels in the checkpoint's id order."""

    texts: list[str]
    labels: list[Any]  # label ids, or tuples of them (multi-label)
    source: str
    split: str
    data_sha256: str
    text_column: str | None = None
    label_column: str | None = None
    # Each row's query id (--group-column of a score head): INT8 is then gated on NDCG@10 too.
    groups: list[Any] | None = None

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """What the manifest records of these rows (``evaluation``), so verify re-checks them."""
        columns = {k: v for k, v in (("text_column", self.text_column), ("label_column", self.label_column)) if v}
        return ParityRows(source=self.source, split=self.split, n=len(self.texts), batch_sizes=tuple(batch_sizes),
                          columns=columns, sha256=rows_sha256(self.texts, self.labels))


# --- data ------------------------------------------------------------------------------------

def _data_config(cfg: ParityConfig, train_cfg: TrainConfig | None) -> DataConfig:
    """The checkpoint's data options with --data/--text-column/--label-column applied on top."""
    return data.rebuild_config(train_cfg, **data.held_out_options(cfg))


def _source(dcfg: DataConfig) -> str:
    """How the manifest names a data source: a file by its absolute path, so that verify finds
    it from any folder."""
    return dcfg.data if dcfg.data == "tweets" or not Path(dcfg.data).exists() else str(Path(dcfg.data).resolve())


def load_held_out(cfg: ParityConfig, train_cfg: TrainConfig | None, labels: list[str]) -> HeldOut:
    """Rebuild the checkpoint's split (same seed and ratios) and map its labels to the model's.

    Args:
        cfg: Data source, split and row cap.
        train_cfg: The checkpoint's training config (None if it has none).
        labels: The checkpoint's label names in id order.

    Returns:
        The held-out rows.

    Raises:
        BadInputError: Bad data source, or labels the model does not know.
    """
    dcfg = _data_config(cfg, train_cfg)
    rows, sha = cls_data.held_out(dcfg, cfg.split, labels)
    n = len(rows.texts) if cfg.max_eval_samples is None else cfg.max_eval_samples
    texts, gold = rows.texts[:n], rows.labels[:n]
    if not texts:
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no rows to check parity on")
    ranked = dcfg.problem_type in cls_data.SCORE_PROBLEMS and rows.groups is not None
    groups = ranking_groups(rows.groups[:n]) if ranked else None
    return HeldOut(list(texts), list(gold), _source(dcfg), cfg.split, sha, dcfg.text_column, dcfg.label_column,
                   groups)


def ranking_groups(groups: list[Any] | None) -> list[Any] | None:
    """The query ids a score head's rows are ranked by, or None where they rank nothing (no group
    column, or no query with two candidates: NDCG of one candidate is 1 whatever the scores)."""
    if groups is None or len(set(groups)) == len(groups):
        return None
    return list(groups)


def training_rows(cfg: ParityConfig, train_cfg: TrainConfig | None, n: int) -> HeldOut:
    """The first ``n`` rows of the training split (static-quantization calibration), from the
    same source and split seed as ``load_held_out``; the held-out rows are never among them.

    Raises:
        BadInputError: Bad data source, or a training split with no rows.
    """
    dcfg = _data_config(cfg, train_cfg)
    splits = cls_data.load_splits(dcfg)
    if not splits.train.texts:
        raise BadInputError(f"the training split of {dcfg.data} has no rows to calibrate INT8 on")
    return HeldOut(list(splits.train.texts[:n]), list(splits.train.labels[:n]), _source(dcfg), "train",
                   splits.data_sha256, dcfg.text_column, dcfg.label_column)


# --- scoring ---------------------------------------------------------------------------------

def classification_metrics(logits: np.ndarray, gold: Sequence[Any], num_labels: int,
                           decisions: Decisions | None = None, groups: Sequence[Any] | None = None) -> dict[str, float]:
    """Held-out metrics of logits by the head's rule (the metric keys of docs/architecture.md).

    Args:
        logits: [rows, labels].
        gold: Label ids (single-label) or tuples of label ids (multi-label).
        num_labels: The number of labels.
        decisions: The head's rule (None: single-label).
        groups: A score head's query id per row (``ranking_groups``), or None.

    Returns:
        Single-label: ``accuracy`` and ``macro_f1`` of the top labels. Multi-label: ``micro_f1``,
        ``macro_f1``, ``samples_f1``, ``subset_accuracy`` and ``hamming_loss`` at the thresholds. A
        score head: ``spearman`` and ``pearson`` with the gold scores, and with ``groups`` the
        ranking's ``ndcg_at_10`` and ``mrr_at_10``.
    """
    from sklearn.metrics import accuracy_score, f1_score

    if decisions is not None and decisions.score_head:
        predicted = decisions.predicted(logits)
        metrics = score_metrics(list(gold), predicted)
        out = {k: metrics[k] for k in ("spearman", "pearson")}
        if groups is not None:
            ranking = ranking_metrics(groups, np.asarray(gold, dtype=np.float64), predicted)
            out.update(ndcg_at_10=ranking["ndcg_at_10"], mrr_at_10=ranking["mrr_at_10"])
        return out
    if decisions is not None and decisions.multi_label:
        metrics = multi_label_metrics(cls_data.multi_hot(list(gold), num_labels), decisions.predicted(logits),
                                      list(decisions.labels))
        return {k: metrics[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")}
    predicted = logits.argmax(axis=-1)
    return {"accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, labels=list(range(num_labels)),
                                       average="macro", zero_division=0))}


def gated_f1(decisions: Decisions | None, groups: Sequence[Any] | None = None) -> str:
    """The quality whose loss the INT8 gate bounds: macro-F1 of the top labels, micro-F1 of
    multi-label decisions (rare labels' few rows would make a macro loss noise), a score head's
    NDCG@10 when its rows have query ids (``groups``: the ranking is what a reranker serves), else
    its Spearman correlation with the gold scores."""
    if decisions is not None and decisions.score_head:
        return "ndcg_at_10" if groups is not None else "spearman"
    return "micro_f1" if decisions is not None and decisions.multi_label else "macro_f1"


def reference_logits(model: Any, tokenizer: Any, texts: Sequence[Any], max_length: int,
                     batch_size: int = 64, truncation: str = "longest_first") -> np.ndarray:
    """PyTorch logits of ``texts`` from the checkpoint model, tokenized by its own tokenizer.

    Returns:
        float32 array [len(texts), num_labels].
    """
    import inspect

    import torch
    from deploykit.progress import bar as progress_bar

    # A tokenizer may return inputs the model does not take (DistilBERT: no token_type_ids).
    accepted = set(inspect.signature(model.forward).parameters)
    out = []
    with torch.inference_mode():
        for start in progress_bar(range(0, len(texts), batch_size), desc="pytorch reference", unit="batch",
                          leave=False):
            batch = cls_data.encode(tokenizer, list(texts[start:start + batch_size]), max_length, truncation,
                                    padding=True, return_tensors="pt")
            out.append(model(**{k: v for k, v in batch.items() if k in accepted}).logits.float().numpy())
    return np.concatenate(out).astype(np.float32)


def runtime_logits(runtime: Any, texts: Sequence[str], sizes: Sequence[int], desc: str = "onnx",
                   progress: bool = True) -> np.ndarray:
    """Logits of ``texts`` through a serving ``Runtime``: its tokenization, padding and feeds.

    Args:
        runtime: A ``deploykit.runtime.Runtime``.
        texts: The rows.
        sizes: Batch sizes to cycle through (one model call per batch, in the rows' order).
        desc: Progress-bar label.
        progress: Show a progress bar.

    Returns:
        float32 array [len(texts), num_labels].
    """
    from deploykit.progress import bar as progress_bar

    rows = runtime.tokenize(texts)
    quiet = {} if progress else {"disable": True}  # passing disable=False would override TQDM_DISABLE
    out = [runtime.run(rows[part])
           for part in progress_bar(batches(len(rows), sizes), desc=desc, unit="batch", leave=False, **quiet)]
    return np.concatenate(out).astype(np.float32)


def batch_independence(runtime: Any, texts: Sequence[str], batched: np.ndarray | None = None,
                       batch_size: int = MIXED_BATCH, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """How far a text's logits move with its batch mates: each row alone (a batch of one, never
    padded) against the same row in seeded random batches of ``batch_size`` rows (padded to
    their longest) and, if given, in the batches that produced ``batched``.

    Dynamic INT8 scales activations per call from the whole batch, so its logits move; static
    INT8 and float graphs keep theirs (up to float rounding).

    Args:
        runtime: A ``deploykit.runtime.Runtime``.
        texts: The rows.
        batched: Logits of ``texts`` from another batching (parity's own pass), or None.
        batch_size: Rows per shuffled batch.
        seed: Seed of the shuffle.
        progress: Show a progress bar.

    Returns:
        ``{"max_abs_diff", "mean_abs_diff", "label_flips", "rows", "mixed_batch_size"}``: the worst
        and mean |Δlogit| between alone and batched, and the rows whose label differs in a batch.
    """
    from deploykit.progress import bar as progress_bar

    rows = runtime.tokenize(texts)
    if not rows:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "label_flips": 0, "rows": 0,
                "mixed_batch_size": batch_size}
    quiet = {} if progress else {"disable": True}
    alone = np.concatenate([runtime.run([row]) for row in progress_bar(rows, desc="rows alone", unit="row",
                                                               leave=False, **quiet)])
    order = np.random.default_rng(seed).permutation(len(rows))
    mixed = np.zeros_like(alone)
    for start in range(0, len(rows), batch_size):
        part = order[start:start + batch_size]
        mixed[part] = runtime.run([rows[i] for i in part])
    others = [mixed] if batched is None else [mixed, np.asarray(batched, dtype=np.float32)]
    diff = np.stack([np.abs(o.astype(np.float64) - alone) for o in others])
    flips = np.zeros(len(rows), dtype=bool)
    for other in others:
        flips |= runtime.decisions.changed_rows(alone, other)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "label_flips": int(flips.sum()), "rows": len(rows), "mixed_batch_size": batch_size}


def max_f1_drop(cfg: ParityConfig, decisions: Decisions | None, groups: Sequence[Any] | None = None) -> float:
    """The INT8 gate's bound on the loss of ``gated_f1``: --int8-max-f1-drop, for multi-label
    decisions --int8-max-micro-f1-drop, for a ranked score head --int8-max-ndcg-drop."""
    if gated_f1(decisions, groups) == "ndcg_at_10":
        return cfg.int8_max_ndcg_drop
    return cfg.int8_max_micro_f1_drop if decisions is not None and decisions.multi_label else cfg.int8_max_f1_drop


def bounds_for(precision: str, cfg: ParityConfig, decisions: Decisions | None = None,
               groups: Sequence[Any] | None = None) -> dict[str, float]:
    """The tolerances of a precision (fp32 and fused graphs vs INT8) for a head's rule. The F1
    bound keeps its historical name, ``max_macro_f1_drop``, whichever quality ``gated_f1`` names."""
    if precision in INT8_PRECISIONS:
        return {"min_label_agreement": cfg.int8_min_agreement,
                "max_macro_f1_drop": max_f1_drop(cfg, decisions, groups)}
    return {"max_abs_diff": cfg.fp32_atol, "min_label_agreement": cfg.fp32_min_agreement}


def check_variant(folder: Path, manifest: Manifest, name: str, held: HeldOut, reference: np.ndarray,
                  reference_metrics: dict[str, float], cfg: ParityConfig) -> ParityResult:
    """Compare one variant, run by the serving runtime, with the PyTorch reference: the graph's
    interface against the manifest, then shapes, then values.

    Args:
        folder: The artifact folder (export's temporary one before it is renamed into place).
        manifest: Its manifest (export's draft, or the verified one).
        name: The variant (fp32, opt, int8); its precision chooses the bounds.
        held: Held-out rows.
        reference: PyTorch logits of ``held.texts``.
        reference_metrics: PyTorch's accuracy and macro-F1 on them.
        cfg: Tolerances and batch sizes.

    Returns:
        The result; ``result.failures`` lists every missed bound (empty when it passed).
    """
    precision = manifest.variants[name].precision
    # The numbers' order is the manifest's (a failed interface leaves them not a number).
    result = ParityResult(name, precision, {"max_abs_diff": float("nan"), "mean_abs_diff": float("nan"),
                                            "label_agreement": 0.0},
                          bounds=bounds_for(precision, cfg, Decisions.of(manifest.head, manifest.head.labels),
                                            held.groups))
    try:
        runtime = Runtime.of_variant(folder, manifest, name)
    except BadInputError as exc:  # no point comparing values of a graph with the wrong interface
        result.fail("interface", str(exc), "the manifest's inputs and output")
        return result
    logits = runtime_logits(runtime, held.texts, cfg.batch_size_list, desc=name)
    if logits.shape != reference.shape:
        result.fail("output shape", list(logits.shape), list(reference.shape))
        return result
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    n = result.numbers
    decisions = runtime.decisions
    # Top-1 agreement, or per-label agreement of the thresholded decisions (multi-label); a score
    # head's float graphs keep the order of every two rows further apart than twice the logit
    # bound (each may move by the bound), INT8's is judged by Spearman.
    tolerance = None if precision in INT8_PRECISIONS else 2 * cfg.fp32_atol
    n.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
             label_agreement=decisions.agreement(reference, logits, tolerance))
    result.metrics = classification_metrics(logits, held.labels, reference.shape[1], decisions, held.groups)
    result.batch_independence = batch_independence(runtime, held.texts, logits, progress=True)
    b = result.bounds
    if "max_abs_diff" in b and not n["max_abs_diff"] <= b["max_abs_diff"]:
        result.fail("max_abs_diff", n["max_abs_diff"], b["max_abs_diff"], n["max_abs_diff"] - b["max_abs_diff"])
    if n["label_agreement"] < b["min_label_agreement"]:
        result.fail("label_agreement", n["label_agreement"], b["min_label_agreement"],
                    b["min_label_agreement"] - n["label_agreement"])
    if "max_macro_f1_drop" in b:
        key = gated_f1(decisions, held.groups)
        drop = reference_metrics[key] - result.metrics[key]
        if drop > b["max_macro_f1_drop"]:
            result.fail(f"{key}_drop", drop, b["max_macro_f1_drop"], drop - b["max_macro_f1_drop"])
    return result


def columns(reference_metrics: dict[str, float]) -> list[Column]:
    """The parity table's columns: the logits' differences, label agreement, held-out metrics and
    batch dependence."""
    def number(key: str):
        return lambda r: fmt(r.numbers.get(key))

    def metric(key: str):
        return lambda r: fmt(r.metrics.get(key))

    shown = [key for key in ("accuracy", "subset_accuracy", "micro_f1", "macro_f1", "spearman", "pearson", "ndcg_at_10")
             if key in reference_metrics]
    return [Column("max_abs_diff", number("max_abs_diff")), Column("mean_abs_diff", number("mean_abs_diff")),
            Column("agreement", number("label_agreement")),
            *(Column(key, metric(key), f"{reference_metrics[key]:.4f}") for key in shown),
            Column("batch_dependence", lambda r: fmt(r.batch_independence.get("max_abs_diff")))]

"""token-classification's parity: every variant, run by the serving runtime, against the transformers
pipeline on the checkpoint, on what users see: the entities.

The reference is ``transformers.pipeline("token-classification", model=CHECKPOINT,
aggregation_strategy=S, stride=K)`` with the tokenizer's ``model_max_length`` set to the
manifest's ``max_length`` (the pipeline otherwise windows at 512), for S in simple, first, average
and max, plus S=none without a stride (the pipeline refuses a stride with none). Each text is
windowed and run through the model once; the pipeline's own ``postprocess`` then aggregates the
same outputs five ways (``reference``).

A variant passes when, on the held-out sentences and on a few long texts made of them (about three
windows each: the windows and the merge of their overlapping entities, by the pipeline's own rule,
the longer entity wins), it finds for every sentence and every aggregation the same entities
(type, start, end) as the pipeline, with scores within ``--fp32-score-atol`` (fp32, fused); an INT8
variant must reproduce the entity set of at least ``--int8-min-span-agreement`` of the sentences
with the default aggregation and lose at most ``--int8-max-entity-f1-drop`` of entity-F1. Every
variant's batch independence is measured: each window alone against the same window in mixed
batches (the variant rule serves by default only a variant whose outputs do not move).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import data as shared_data
from deploykit.config import DataConfig, ParityConfig
from deploykit.errors import BadInputError
from deploykit.export.parity import Column, ParityResult, batches, fmt
from deploykit.manifest import Manifest, ParityRows
from deploykit.tasks.token_classification import aggregation, data, scoring
from deploykit.tasks.token_classification.head import AGGREGATIONS
from deploykit.tasks.token_classification.runtime import Runtime

log = logging.getLogger(__name__)

INT8_PRECISIONS = ("int8",)
STRIDED = tuple(s for s in AGGREGATIONS if s != "none")  # the pipeline takes a stride with these
MIXED_BATCH = 32
LONG_WINDOWS = 3  # a long parity text spans about this many windows


@dataclass
class HeldOut:
    """The sentences parity runs on (with their gold entities), and the long texts made of them."""

    texts: list[str]
    entities: list[list[tuple[str, int, int]]]
    source: str
    split: str
    data_sha256: str
    columns: dict[str, str] = field(default_factory=dict)
    long_texts: list[str] = field(default_factory=list)

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """What the manifest records of these rows (``evaluation``), so verify re-checks them."""
        digest = hashlib.sha256(json.dumps([self.texts, self.entities], ensure_ascii=False).encode()).hexdigest()
        return ParityRows(source=self.source, split=self.split, n=len(self.texts), batch_sizes=tuple(batch_sizes),
                          columns=self.columns, sha256=digest)


def data_config(cfg: ParityConfig, train_cfg: Any) -> DataConfig:
    """The checkpoint's data options with --data and the column options applied on top."""
    return shared_data.rebuild_config(train_cfg, **shared_data.held_out_options(cfg))


def source_name(dcfg: DataConfig) -> str:
    """A file by its absolute path, so that verify finds it from any folder."""
    return str(Path(dcfg.data).resolve()) if Path(dcfg.data).exists() else dcfg.data


def long_texts(texts: Sequence[str], tokenizer: Any, max_length: int, count: int) -> list[str]:
    """``count`` texts of about ``LONG_WINDOWS`` windows each, made by joining consecutive sentences."""
    if count <= 0 or not texts:
        return []
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
    out, current, tokens, i = [], [], 0, 0
    while len(out) < count and i < len(texts) * LONG_WINDOWS * 2:
        current.append(texts[i % len(texts)])
        tokens += lengths[i % len(texts)]
        i += 1
        if tokens >= LONG_WINDOWS * max_length:
            out.append(" ".join(current))
            current, tokens = [], 0
    return out


def load_held_out(cfg: ParityConfig, train_cfg: Any, tokenizer: Any, labels: list[str], max_length: int) -> HeldOut:
    """Rebuild the checkpoint's split (same seed and ratios), or read ``--data --split all``.

    Args:
        cfg: Data source, split, row cap, long texts.
        train_cfg: The checkpoint's training config (None if it has none).
        tokenizer: ``data.backend`` of the checkpoint's tokenizer.
        labels: The checkpoint's labels.
        max_length: The artifact's window length (the long texts' size).

    Raises:
        BadInputError: Bad data source, entity types the model does not know, or no rows.
    """
    dcfg = data_config(cfg, train_cfg)
    rows, sha = data.held_out(dcfg, cfg.split, tokenizer, labels)
    n = len(rows) if cfg.max_eval_samples is None else cfg.max_eval_samples
    if not rows.texts[:n]:
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no rows to check parity on")
    # The columns the rows came from: a text and an entities column, or a tokens and a tags column.
    used = ("text_column", "entities_column") if dcfg.entities_column else ("tokens_column", "tags_column")
    columns = {c: getattr(dcfg, c) for c in used}
    return HeldOut(rows.texts[:n], rows.entities[:n], source_name(dcfg), cfg.split, sha, columns,
                   long_texts(rows.texts[:n], tokenizer, max_length, cfg.long_texts))


# --- the reference -----------------------------------------------------------------------------

@dataclass
class Reference:
    """The pipeline's entities of the held-out sentences (by aggregation) and of the long texts (the
    strided aggregations), and its entity metrics with the default aggregation."""

    found: dict[str, list[list[dict[str, Any]]]]
    long_found: dict[str, list[list[dict[str, Any]]]]
    metrics: dict[str, float]
    aggregation: str
    words: list[list[tuple[int, int]]]


def pipeline_entities(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, stride: int,
                      strategies: Sequence[str], desc: str = "pipeline") -> dict[str, list[list[dict[str, Any]]]]:
    """The transformers pipeline's entities of ``texts`` for each strategy: one forward pass per
    window, then the pipeline's ``postprocess`` once per strategy (``none``: only for texts of one
    window, which the pipeline, refusing a stride with none, would otherwise cut).

    Args:
        model: The checkpoint's token-classification model (eval mode).
        tokenizer: Its fast tokenizer (a copy is given ``model_max_length = max_length``).
        texts: The texts.
        max_length: The window length.
        stride: The windows' overlap.
        strategies: Aggregation strategies.
        desc: Progress-bar label.

    Returns:
        ``{strategy: [entities of each text]}`` (``none``: None for a text of several windows).
    """
    import copy

    from deploykit.progress import bar as progress_bar
    from transformers import pipeline
    from transformers.pipelines.token_classification import AggregationStrategy

    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = max_length
    pipe = pipeline("token-classification", model=model, tokenizer=tok, device="cpu")
    # The pipeline's own parameter handling: how it windows for a stride, and its postprocess options.
    pre, _, _ = pipe._sanitize_parameters(aggregation_strategy="simple", stride=stride)
    out: dict[str, list] = {s: [] for s in strategies}
    for text in progress_bar(texts, desc=desc, unit="text", leave=False):
        outputs = [pipe.forward(chunk) for chunk in pipe.preprocess(text, **pre)]
        for strategy in strategies:
            if strategy == "none" and len(outputs) > 1:
                out[strategy].append(None)
                continue
            found = pipe.postprocess(outputs, aggregation_strategy=AggregationStrategy(strategy))
            out[strategy].append([{k: (float(v) if k == "score" else v) for k, v in e.items()} for e in found])
    return out


def reference(model: Any, tokenizer: Any, held: HeldOut, max_length: int, stride: int, default: str) -> Reference:
    """The pipeline on the held-out sentences (every aggregation) and the long texts (the strided
    ones), and its entity metrics against the gold entities with the ``default`` aggregation."""
    found = pipeline_entities(model, tokenizer, held.texts, max_length, stride, AGGREGATIONS, "pipeline reference")
    long_found = pipeline_entities(model, tokenizer, held.long_texts, max_length, stride, STRIDED,
                                   "pipeline reference (long texts)") if held.long_texts else {}
    words = data.words(data.backend(tokenizer), held.texts)
    metrics = headline(scoring.entity_metrics(words, held.entities, [aggregation.spans(f) for f in found[default]]))
    return Reference(found, long_found, metrics, default, words)


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The entity metrics a manifest records per variant."""
    return {k: metrics[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")}


# --- comparing ---------------------------------------------------------------------------------

def compare(got: Sequence[Sequence[dict[str, Any]]], want: Sequence[Sequence[dict[str, Any]] | None]) -> tuple[float, float]:
    """(share of texts with the same entities (type, start, end), the largest score difference over
    the entities of those texts); texts the reference has no answer for (None) are left out."""
    same, worst, counted = 0, 0.0, 0
    for g, w in zip(got, want):
        if w is None:
            continue
        counted += 1
        if aggregation.spans(g) == aggregation.spans(w):
            same += 1
            worst = max([worst] + [abs(a["score"] - b["score"]) for a, b in zip(g, w)])
    return (same / counted if counted else 1.0), worst


def runtime_logits(runtime: Runtime, texts: Sequence[str], sizes: Sequence[int], desc: str = "onnx",
                   progress: bool = True) -> tuple[list, np.ndarray]:
    """(windows, their logits) of ``texts`` through the serving runtime, batches cycling through ``sizes``."""
    from deploykit.progress import bar as progress_bar

    rows = runtime.tokenize(texts)
    quiet = {} if progress else {"disable": True}  # passing disable=False would override TQDM_DISABLE
    out = np.empty(len(rows), dtype=object)
    for part in progress_bar(batches(len(rows), sizes), desc=desc, unit="batch", leave=False, **quiet):
        out[part] = runtime.run(rows[part])
    return rows, out


def batch_independence(runtime: Any, texts: Sequence[str], batched: np.ndarray | None = None,
                       batch_size: int = MIXED_BATCH, seed: int = 0, progress: bool = False,
                       rows: Sequence[Any] | None = None) -> dict[str, Any]:
    """How far a window's logits move with its batch mates: each window alone (a batch of one, never
    padded) against the same window in seeded random batches of ``batch_size`` (and, if given, in
    the batches that produced ``batched``).

    Args:
        runtime: A runtime whose ``run`` answers one array per window (any span task's).
        texts: The texts (``runtime.tokenize(texts)``), unless ``rows`` gives their windows.
        batched: Their windows' outputs as computed in other batches, to compare too.
        batch_size: Windows per mixed batch.
        seed: Seed of the mixed batches.
        progress: Show a progress bar.
        rows: Windows tokenized already (a question-answering runtime's pairs).

    Returns:
        ``{"max_abs_diff", "mean_abs_diff", "label_flips", "rows", "mixed_batch_size"}`` (rows and
        flips count windows: a window flips when any row of its output changes its argmax: a
        token's label, a best start or end).
    """
    from deploykit.progress import bar as progress_bar

    rows = runtime.tokenize(texts) if rows is None else list(rows)
    quiet = {} if progress else {"disable": True}
    alone = [runtime.run([row])[0] for row in progress_bar(rows, desc="rows alone", unit="row", leave=False, **quiet)]
    order = np.random.default_rng(seed).permutation(len(rows))
    mixed = np.empty(len(rows), dtype=object)
    for start in range(0, len(rows), batch_size):
        part = order[start:start + batch_size]
        mixed[part] = runtime.run([rows[i] for i in part])
    others = [mixed] if batched is None else [mixed, batched]
    worst, total, count, flips = 0.0, 0.0, 0, 0
    for i, base in enumerate(alone):
        flipped = False
        for other in others:
            diff = np.abs(other[i].astype(np.float64) - base)
            worst, total, count = max(worst, float(diff.max(initial=0.0))), total + float(diff.sum()), count + diff.size
            flipped |= bool((other[i].argmax(-1) != base.argmax(-1)).any())
        flips += flipped
    return {"max_abs_diff": worst, "mean_abs_diff": total / max(count, 1), "label_flips": flips, "rows": len(rows),
            "mixed_batch_size": batch_size}


def bounds_for(precision: str, cfg: ParityConfig) -> dict[str, float]:
    """The tolerances of a precision (fp32 and fused graphs vs INT8)."""
    if precision in INT8_PRECISIONS:
        return {"min_span_agreement": cfg.int8_min_span_agreement, "max_entity_f1_drop": cfg.int8_max_entity_f1_drop}
    return {"min_span_agreement": 1.0, "max_score_diff": cfg.fp32_score_atol}


def check_variant(folder: Path, manifest: Manifest, name: str, held: HeldOut, ref: Reference,
                  cfg: ParityConfig) -> ParityResult:
    """Compare one variant, run by the serving runtime, with the pipeline: the graph's interface
    against the manifest, then the entities of every aggregation, then the entity metrics.

    Returns:
        The result; ``failures`` lists every missed bound (empty when it passed).
    """
    precision = manifest.variants[name].precision
    result = ParityResult(name, precision, {"span_agreement": 0.0, "max_score_diff": float("nan")},
                          bounds=bounds_for(precision, cfg))
    try:
        runtime = Runtime.of_variant(folder, manifest, name)
    except BadInputError as exc:
        result.fail("interface", str(exc), "the manifest's inputs and output")
        return result
    rows, logits = runtime_logits(runtime, held.texts, cfg.batch_size_list, desc=name)
    agreement, worst = {}, {}
    for strategy in AGGREGATIONS:
        agreement[strategy], worst[strategy] = compare(runtime.entities(held.texts, rows, logits, strategy),
                                                       ref.found[strategy])
    if held.long_texts:
        long_rows, long_logits = runtime_logits(runtime, held.long_texts, cfg.batch_size_list, desc=f"{name} long")
        for strategy in STRIDED:
            share, diff = compare(runtime.entities(held.long_texts, long_rows, long_logits, strategy),
                                  ref.long_found[strategy])
            agreement[f"long_{strategy}"], worst[f"long_{strategy}"] = share, diff
    found = runtime.entities(held.texts, rows, logits, ref.aggregation)
    result.metrics = headline(scoring.entity_metrics(ref.words, held.entities, [aggregation.spans(f) for f in found]))
    n = result.numbers
    n.update(span_agreement=agreement[ref.aggregation], max_score_diff=max(worst.values()),
             min_span_agreement=min(agreement.values()), agreement=agreement, long_texts=len(held.long_texts))
    result.batch_independence = batch_independence(runtime, held.texts, logits, progress=True)
    b = result.bounds
    if "max_score_diff" in b:
        # Float variants: the very same entities for every aggregation, long texts included.
        for strategy, share in agreement.items():
            if share < b["min_span_agreement"]:
                result.fail(f"span_agreement {strategy}", share, b["min_span_agreement"], b["min_span_agreement"] - share)
        if not n["max_score_diff"] <= b["max_score_diff"]:
            result.fail("max_score_diff", n["max_score_diff"], b["max_score_diff"], n["max_score_diff"] - b["max_score_diff"])
    else:
        if n["span_agreement"] < b["min_span_agreement"]:
            result.fail("span_agreement", n["span_agreement"], b["min_span_agreement"],
                        b["min_span_agreement"] - n["span_agreement"])
        drop = ref.metrics["entity_f1"] - result.metrics["entity_f1"]
        if drop > b["max_entity_f1_drop"]:
            result.fail("entity_f1_drop", drop, b["max_entity_f1_drop"], drop - b["max_entity_f1_drop"])
    return result


def columns(ref: Reference) -> list[Column]:
    """The parity table's columns: span agreement (default aggregation, and the lowest of all),
    the largest score difference, the entity metrics and batch dependence."""
    def number(key: str):
        return lambda r: fmt(r.numbers.get(key))

    def metric(key: str):
        return lambda r: fmt(r.metrics.get(key))

    return [Column(f"agreement ({ref.aggregation})", number("span_agreement")),
            Column("lowest agreement", number("min_span_agreement")),
            Column("max_score_diff", number("max_score_diff")),
            Column("entity_f1", metric("entity_f1"), f"{ref.metrics['entity_f1']:.4f}"),
            Column("token_accuracy", metric("token_accuracy"), f"{ref.metrics['token_accuracy']:.4f}"),
            Column("batch_dependence", lambda r: fmt(r.batch_independence.get("max_abs_diff")))]

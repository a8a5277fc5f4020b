"""Step 4: parity of every exported variant against the PyTorch checkpoint on held-out rows.

In the style of optimum's export validation: check the graph's input and output names, then
the output shape, then the values; collect every failure and report them together. The ONNX
side tokenizes with the artifact's own ``tokenizer.json`` through the ``tokenizers`` library,
exactly as the torch-free runtime will, so a mismatched tokenizer shows up here too. Rows are
scored in batches whose sizes cycle through ``--batch-sizes`` (batch 1 is unpadded, larger
batches mix padded and full rows), so one pass covers several shapes.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit.config import DataConfig, ParityConfig, TrainConfig
from deploykit.errors import BadInputError

log = logging.getLogger(__name__)

OUTPUT = "logits"
INT8_PRECISIONS = ("int8",)


@dataclass
class HeldOut:
    """The rows parity and metrics are computed on, with labels in the checkpoint's id order."""

    texts: list[str]
    labels: list[int]
    source: str
    split: str
    data_sha256: str


@dataclass
class VariantResult:
    """Parity numbers, metrics and bound failures of one variant."""

    name: str
    precision: str
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    label_agreement: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def parity(self) -> dict[str, Any]:
        """The manifest's ``parity`` entry."""
        return {"max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "label_agreement": self.label_agreement, "passed": self.passed,
                "bounds": self.bounds, "failures": self.failures}


# --- data ------------------------------------------------------------------------------------

def _data_config(cfg: ParityConfig, train_cfg: TrainConfig | None) -> DataConfig:
    """The checkpoint's data options with --data/--text-column/--label-column applied on top."""
    from deploykit import data

    return data.rebuild_config(train_cfg, data=cfg.data, text_column=cfg.text_column,
                               label_column=cfg.label_column)


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
    from deploykit import data

    dcfg = _data_config(cfg, train_cfg)
    rows, sha = data.held_out(dcfg, cfg.split, labels)
    texts, gold = rows.texts, rows.labels
    if cfg.max_eval_samples is not None:
        texts, gold = texts[:cfg.max_eval_samples], gold[:cfg.max_eval_samples]
    if not texts:
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no rows to check parity on")
    return HeldOut(list(texts), list(gold), dcfg.data, cfg.split, sha)


def training_texts(cfg: ParityConfig, train_cfg: TrainConfig | None, n: int) -> list[str]:
    """The first ``n`` rows of the training split (static-quantization calibration)."""
    from deploykit import data

    splits = data.load_splits(_data_config(cfg, train_cfg))
    return splits.train.texts[:n]


# --- scoring ---------------------------------------------------------------------------------

def classification_metrics(logits: np.ndarray, gold: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions (DESIGN.md's metric keys)."""
    from sklearn.metrics import accuracy_score, f1_score

    predicted = logits.argmax(axis=-1)
    return {"accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, labels=list(range(num_labels)),
                                       average="macro", zero_division=0))}


def reference_logits(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                     batch_size: int = 64) -> np.ndarray:
    """PyTorch logits of ``texts`` from the checkpoint model, tokenized by its own tokenizer.

    Returns:
        float32 array [len(texts), num_labels].
    """
    import inspect

    import torch
    from tqdm.auto import tqdm

    # A tokenizer may return inputs the model does not take (DistilBERT: no token_type_ids).
    accepted = set(inspect.signature(model.forward).parameters)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="pytorch reference", unit="batch",
                          leave=False):
            batch = tokenizer(list(texts[start:start + batch_size]), truncation=True,
                              max_length=max_length, padding=True, return_tensors="pt")
            out.append(model(**{k: v for k, v in batch.items() if k in accepted}).logits.float().numpy())
    return np.concatenate(out).astype(np.float32)


def batches(n: int, sizes: Sequence[int]) -> list[slice]:
    """Consecutive row slices whose sizes cycle through ``sizes`` (the last one may be short)."""
    result, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= n:
            return result
        result.append(slice(start, min(start + size, n)))
        start += size
    return result


def session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for a graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logits(sess: Any, tokenizer_file: Path, texts: Sequence[str], max_length: int,
                sizes: Sequence[int], desc: str = "onnx", progress: bool = True) -> np.ndarray:
    """Logits of ``texts`` from an ONNX session, tokenized with ``tokenizer.json`` (no transformers).

    Args:
        sess: An onnxruntime session.
        tokenizer_file: The artifact's ``tokenizer.json``.
        texts: The rows.
        max_length: Truncation length.
        sizes: Batch sizes to cycle through.
        desc: Progress-bar label.
        progress: Show a progress bar.

    Returns:
        float32 array [len(texts), num_labels].
    """
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length)
    if tokenizer.padding is None:  # an artifact written by export always carries its padding
        pad = next((t for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), None)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad) if pad else 0, pad_token=pad or "[PAD]")
    types = {i.name: (np.int32 if i.type == "tensor(int32)" else np.int64) for i in sess.get_inputs()}
    out = []
    quiet = {} if progress else {"disable": True}  # passing disable=False would override TQDM_DISABLE
    for part in tqdm(batches(len(texts), sizes), desc=desc, unit="batch", leave=False, **quiet):
        encoded = tokenizer.encode_batch(list(texts[part]))
        arrays = {"input_ids": [e.ids for e in encoded], "attention_mask": [e.attention_mask for e in encoded],
                  "token_type_ids": [e.type_ids for e in encoded]}
        feeds = {name: np.asarray(arrays[name], dtype=dtype) for name, dtype in types.items()}
        out.append(sess.run([OUTPUT], feeds)[0])
    return np.concatenate(out).astype(np.float32)


def bounds_for(precision: str, cfg: ParityConfig) -> dict[str, float]:
    """The tolerances of a precision (fp32 and fused graphs vs INT8)."""
    if precision in INT8_PRECISIONS:
        return {"min_label_agreement": cfg.int8_min_agreement, "max_macro_f1_drop": cfg.int8_max_f1_drop}
    return {"max_abs_diff": cfg.fp32_atol, "min_label_agreement": cfg.fp32_min_agreement}


def check_variant(name: str, precision: str, path: Path, tokenizer_file: Path, inputs: Sequence[str],
                  held: HeldOut, reference: np.ndarray, reference_metrics: dict[str, float],
                  max_length: int, cfg: ParityConfig) -> VariantResult:
    """Compare one ONNX variant with the PyTorch reference: names, then shapes, then values.

    Args:
        name: Variant name (fp32, opt, int8, int8-static).
        precision: ``fp32`` or ``int8`` (chooses the bounds).
        path: The variant's ONNX file.
        tokenizer_file: The artifact's ``tokenizer.json``.
        inputs: Input names the manifest declares.
        held: Held-out rows.
        reference: PyTorch logits of ``held.texts``.
        reference_metrics: PyTorch's accuracy and macro-F1 on them.
        max_length: Truncation length.
        cfg: Tolerances and batch sizes.

    Returns:
        The result; ``result.failures`` lists every missed bound (empty when it passed).
    """
    result = VariantResult(name, precision, bounds=bounds_for(precision, cfg))

    def fail(check: str, value: Any, limit: Any, missed_by: float | None = None) -> None:
        result.failures.append({"check": check, "value": value, "limit": limit, "missed_by": missed_by})

    sess = session(path)
    graph_inputs = [i.name for i in sess.get_inputs()]
    graph_outputs = [o.name for o in sess.get_outputs()]
    if set(graph_inputs) != set(inputs):
        fail("input names", graph_inputs, list(inputs))
    if OUTPUT not in graph_outputs:
        fail("output names", graph_outputs, [OUTPUT])
    if result.failures:  # no point comparing values of a graph with the wrong interface
        return result
    logits = onnx_logits(sess, tokenizer_file, held.texts, max_length, cfg.batch_size_list, desc=name)
    if logits.shape != reference.shape:
        fail("output shape", list(logits.shape), list(reference.shape))
        return result
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    result.max_abs_diff = float(diff.max())
    result.mean_abs_diff = float(diff.mean())
    result.label_agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    result.metrics = classification_metrics(logits, held.labels, reference.shape[1])
    b = result.bounds
    if "max_abs_diff" in b and not result.max_abs_diff <= b["max_abs_diff"]:
        fail("max_abs_diff", result.max_abs_diff, b["max_abs_diff"], result.max_abs_diff - b["max_abs_diff"])
    if result.label_agreement < b["min_label_agreement"]:
        fail("label_agreement", result.label_agreement, b["min_label_agreement"],
             b["min_label_agreement"] - result.label_agreement)
    if "max_macro_f1_drop" in b:
        drop = reference_metrics["macro_f1"] - result.metrics["macro_f1"]
        if drop > b["max_macro_f1_drop"]:
            fail("macro_f1_drop", drop, b["max_macro_f1_drop"], drop - b["max_macro_f1_drop"])
    return result


def table(results: Sequence[VariantResult], reference_metrics: dict[str, float]) -> str:
    """A plain-text table: one row per variant with its numbers and which bound it missed by how much."""
    rows = [("variant", "max_abs_diff", "mean_abs_diff", "agreement", "accuracy", "macro_f1", "result"),
            ("pytorch", "-", "-", "-", f"{reference_metrics['accuracy']:.4f}",
             f"{reference_metrics['macro_f1']:.4f}", "reference")]
    for r in results:
        verdict = "pass" if r.passed else "; ".join(
            f"FAIL {f['check']} {_fmt(f['value'])} vs {_fmt(f['limit'])}"
            + (f" (missed by {_fmt(f['missed_by'])})" if f["missed_by"] is not None else "")
            for f in r.failures)
        rows.append((r.name, _fmt(r.max_abs_diff), _fmt(r.mean_abs_diff), _fmt(r.label_agreement),
                     _fmt(r.metrics.get("accuracy")), _fmt(r.metrics.get("macro_f1")), verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return "-" if value is None else str(value)

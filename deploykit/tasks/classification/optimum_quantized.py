"""Optimum's own best INT8 of the checkpoint: the ``optimum-quantized`` engine of ``bench offline``.

What an Optimum user gets from ``ORTQuantizer`` with ``AutoQuantizationConfig.avx512_vnni``,
built the way Optimum's documentation builds it: Optimum's own export of the checkpoint
(``ORTModelForSequenceClassification.from_pretrained(..., export=True)``), then

- ``dynamic``: ``avx512_vnni(is_static=False, per_channel=True)``, and
- ``static``: ``avx512_vnni(is_static=True, per_channel=True)`` with MinMax ranges
  (``ORTQuantizer.fit``) from the same training rows deploykit's static INT8 was calibrated on
  (the manifest's calibration record; their sha256 is checked),

each scored through ``ORTModelForSequenceClassification`` against PyTorch on validation rows. The
engine is the one with the higher label agreement (a tie goes to the dynamic one-liner), so
deploykit's INT8 is compared with the better of Optimum's two, not a straw man (``prepare``).
The models are built once per benchmark folder and reused while the checkpoint and the
calibration rows stay the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.errors import BadInputError
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

FILE = "model_quantized.onnx"
CONFIGS = ("dynamic", "static")
# Training rows calibrated on when the artifact records none (no static INT8): export's default.
DEFAULT_CALIBRATION_ROWS = 512


def _calibration(manifest: Manifest, checkpoint: Path) -> tuple[Any, list[str], dict[str, Any]]:
    """The data options of the rows deploykit calibrated on (by the manifest's record), the
    training rows themselves, and their record."""
    from deploykit import checkpoint as ckpt
    from deploykit.config import ParityConfig
    from deploykit.tasks.classification import parity

    int8 = manifest.variants.get("int8")
    record = dict(((int8.quantization or {}) if int8 else {}).get("calibration")
                  or manifest.extra.get("int8_selection", {}).get("calibration") or {})
    cfg = ParityConfig(data=record.get("data"), text_column=record.get("text_column"),
                       label_column=record.get("label_column"))
    rows = parity.training_rows(cfg, ckpt.train_config(checkpoint), int(record.get("rows", DEFAULT_CALIBRATION_ROWS)))
    digest = hashlib.sha256(json.dumps(rows.texts, ensure_ascii=False).encode()).hexdigest()
    if record.get("rows_sha256") and record["rows_sha256"] != digest:
        raise BadInputError(f"the training rows of {rows.source} are not the ones {manifest.where} was calibrated "
                            "on (their sha256 differs): the data changed since export; re-export the artifact")
    return cfg, rows.texts, {"data": rows.source, "split": rows.split, "rows": len(rows.texts), "rows_sha256": digest}


def _logits(folder: Path, tokenizer: Any, texts: list[str], max_length: int, batch: int = 32) -> np.ndarray:
    """Logits through ``ORTModelForSequenceClassification``, as an Optimum user runs the model."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(folder, file_name=FILE, provider="CPUExecutionProvider")
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        if "token_type_ids" not in model.input_names:
            enc.pop("token_type_ids", None)
        out.append(model(**enc).logits.numpy())
    return np.concatenate(out).astype(np.float32)


def _build(checkpoint: Path, work: Path, calibration: list[str], max_length: int) -> dict[str, Path]:
    """Optimum's export of the checkpoint and its two quantized models (folders by config)."""
    from datasets import Dataset
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
    from transformers import AutoTokenizer

    base = work / "base"
    model = ORTModelForSequenceClassification.from_pretrained(checkpoint, export=True)
    model.save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.save_pretrained(base)
    folders = {}
    for config in CONFIGS:
        folder = work / config
        quantizer = ORTQuantizer.from_pretrained(base)
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=config == "static", per_channel=True)
        ranges = None
        if config == "static":
            enc = tokenizer(calibration, truncation=True, max_length=max_length)
            dataset = Dataset.from_dict({k: enc[k] for k in model.input_names if k in enc})
            # Batches of one row: never padded, like deploykit's own calibration.
            ranges = quantizer.fit(dataset=dataset, calibration_config=AutoCalibrationConfig.minmax(dataset),
                                   operators_to_quantize=qconfig.operators_to_quantize, batch_size=1,
                                   onnx_augmented_model_name=str(work / "augmented.onnx"))
        quantizer.quantize(save_dir=folder, quantization_config=qconfig, calibration_tensors_range=ranges)
        for item in base.iterdir():  # config and tokenizer files beside the quantized model
            if item.suffix != ".onnx" and not (folder / item.name).exists():
                shutil.copy(item, folder / item.name)
        folders[config] = folder
    shutil.rmtree(base)
    (work / "augmented.onnx").unlink(missing_ok=True)
    return folders


def prepare(checkpoint: str | Path, manifest: Manifest, out: Path, rows: int, max_length: int) -> dict[str, Any]:
    """Build (or reuse) Optimum's two INT8 models of ``checkpoint`` and choose the better one.

    Args:
        checkpoint: The checkpoint the artifact was exported from.
        manifest: The artifact's manifest (its calibration record names the training rows).
        out: The benchmark folder (the models go to ``out/optimum-quantized``).
        rows: Validation rows the candidates are scored on.
        max_length: Truncation length.

    Returns:
        ``{"folder", "file", "config", "calibration", "candidates": {config: {"agreement", ...}}}``:
        the chosen model's folder and file, which config it is, and every candidate's scores.

    Raises:
        BadInputError: No checkpoint, or training rows that differ from the ones calibrated on.
    """
    from dataclasses import replace

    from deploykit import checkpoint as ckpt
    from deploykit.export import onnx_export
    from deploykit.tasks.classification import parity
    from deploykit.files import sha256_file

    checkpoint = Path(checkpoint)
    weights = checkpoint / "model.safetensors"
    data_cfg, calibration, calibration_record = _calibration(manifest, checkpoint)
    key = {"checkpoint_sha256": sha256_file(weights) if weights.is_file() else str(checkpoint.resolve()),
           "calibration_sha256": calibration_record["rows_sha256"], "rows": rows, "max_length": max_length}
    work = out / "optimum-quantized"
    choice_file = work / "choice.json"
    if choice_file.is_file():
        choice = json.loads(choice_file.read_text())
        if choice.get("key") == key and (Path(choice["folder"]) / FILE).is_file():
            log.info("optimum-quantized: reusing %s (%s)", choice["folder"], choice["config"])
            return choice
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.info("optimum-quantized: building Optimum's dynamic and static avx512_vnni INT8 of %s", checkpoint)
    folders = _build(checkpoint, work, calibration, max_length)

    from deploykit.tasks.classification.train import checkpoint_labels

    labels = checkpoint_labels(checkpoint)
    held = parity.load_held_out(replace(data_cfg, split="validation", max_eval_samples=rows),
                                ckpt.train_config(checkpoint), labels)
    model, tokenizer = onnx_export.load_eager(checkpoint)
    reference = parity.reference_logits(model, tokenizer, held.texts, max_length)
    reference_f1 = parity.classification_metrics(reference, held.labels, len(labels))["macro_f1"]
    candidates = {}
    for config, folder in folders.items():
        logits = _logits(folder, tokenizer, held.texts, max_length)
        candidates[config] = {
            "folder": str(folder), "agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
            "macro_f1_drop": reference_f1 - parity.classification_metrics(logits, held.labels, len(labels))["macro_f1"],
            "max_abs_diff": float(np.abs(logits - reference).max())}
    best = max(CONFIGS, key=lambda c: (candidates[c]["agreement"], c == "dynamic"))
    choice = {"folder": candidates[best]["folder"], "file": FILE, "config": best, "key": key,
              "calibration": calibration_record, "rows": {"split": held.split, "n": len(held.texts)},
              "candidates": candidates}
    choice_file.write_text(json.dumps(choice, indent=2) + "\n")
    log.info("optimum-quantized: %s", ", ".join(f"{c} agreement {v['agreement']:.4f}" for c, v in candidates.items())
             + f" on {len(held.texts)} validation rows; the engine runs the {best} model")
    return choice

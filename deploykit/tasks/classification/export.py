"""text-classification's export hooks: the variants, the INT8 choice, the PyTorch reference and parity.

The shared pipeline (``deploykit.export.pipeline``) calls ``Export``: it writes the plain fp32
graph (optimum's exporter, eager attention) and ``tokenizer.json`` (truncation at max_length,
padding per batch), the fused one (onnxruntime's transformer optimizer: ``Attention``,
``SkipLayerNormalization``, ``BiasGelu``; the SDPA export is tried when eager attention does not
fuse), and ``model.int8.onnx`` by ``--quantize``: static QDQ INT8 chosen by measurement on
validation rows (``int8_schemes``, with the accuracy-aware float fallback of ``int8_fallback``) or
dynamic INT8. Parity (``parity``) runs each variant through the serving ``Runtime`` against the
checkpoint's logits on the held-out rows.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint as ckpt
from deploykit.config import ExportConfig, ParityConfig
from deploykit.errors import BadInputError
from deploykit.export import onnx_export, optimize, quantize
from deploykit.export.parity import Column, ParityResult
from deploykit.export.pipeline import Graphs
from deploykit.manifest import VARIANT_FILES, Manifest
from deploykit.tasks.classification import int8_fallback, int8_schemes, parity
from deploykit.tasks.classification.decisions import Decisions
from deploykit.tasks.classification.head import Classification
from deploykit.tasks.classification.runtime import Runtime
from deploykit.tasks.classification.train import checkpoint_head

log = logging.getLogger(__name__)

OPTIMUM_TASK = "text-classification"  # optimum's task: the encoder with its sequence-classification head


@dataclass
class Reference:
    """PyTorch's logits of the held-out rows and its accuracy and macro-F1 on them."""

    logits: np.ndarray
    metrics: dict[str, float]


class Export:
    """The export hooks of text-classification (see ``deploykit.export.pipeline.Export``).

    Args:
        cfg: The stage's options (``ExportConfig`` for export, ``VerifyConfig`` for verify).
        checkpoint: The validated checkpoint.

    Raises:
        BadInputError: optimum-onnx cannot export the architecture.
    """

    def __init__(self, cfg: ParityConfig, checkpoint: Path) -> None:
        self.cfg, self.checkpoint = cfg, checkpoint
        onnx_export.check_supported(checkpoint, OPTIMUM_TASK)
        # Labels, problem type and (multi-label) thresholds, as the manifest will record them.
        self.head = checkpoint_head(checkpoint)
        self.labels = list(self.head.labels)
        self.train_cfg = ckpt.train_config(checkpoint)

    def check_artifact(self, manifest: Manifest) -> None:
        """Refuse a checkpoint with other labels (or problem type, or thresholds) than the artifact's."""
        exported = manifest.head_as(Classification)
        def meaning(head: Classification) -> tuple:  # what the logits mean (a task's own head adds fields)
            return head.labels, head.problem_type, head.thresholds, head.truncation

        if meaning(self.head) != meaning(exported):
            raise BadInputError(f"{self.checkpoint} has labels {self.labels} ({self.head.problem_type}) but "
                                f"{manifest.where.parent} was exported with {list(exported.labels)} "
                                f"({exported.problem_type}); pass the checkpoint the artifact came from")

    def load(self) -> None:
        """The held-out rows (the checkpoint's split, labels in its id order) and the eager model."""
        self.rows = parity.load_held_out(self.cfg, self.train_cfg, self.labels)
        self.model, self.tokenizer = onnx_export.load_eager(self.checkpoint)

    def write(self, folder: Path) -> Graphs:
        """Steps 1-3: tokenizer, config, fp32 and fused graphs, then INT8 by ``--quantize``."""
        cfg, model = self.cfg, self.model
        max_length = _max_length(self.train_cfg, model.config)
        tokenizer_file = onnx_export.write_tokenizer(self.tokenizer, folder / "tokenizer.json", max_length,
                                                     self.head.truncation or "longest_first")
        shutil.copy(self.checkpoint / "config.json", folder / "config.json")
        opt_info = _export_and_optimize(model, self.checkpoint, folder, cfg)
        inputs = Runtime.of_graph(folder / VARIANT_FILES["fp32"], tokenizer_file, max_length).input_names
        records: dict[str, dict[str, Any]] = {"fp32": {"fused_ops": {}}}
        if opt_info:
            records["opt"] = {"fused_ops": opt_info["fused_ops"], "optimization": {
                "level": opt_info["level"], "missing_fusions": opt_info["missing_fusions"],
                "attn_implementation": opt_info["attn_implementation"]}}
        extra: dict[str, Any] = {}
        if cfg.quantize != "none":
            reduce_range = quantize.choose_reduce_range(cfg.reduce_range)
            int8 = folder / VARIANT_FILES["int8"]
            if cfg.quantize == "dynamic":
                source = VARIANT_FILES["opt" if opt_info else "fp32"]
                info = _quantize_dynamic(cfg, folder / source, int8, reduce_range, self.train_cfg, self.head,
                                         self.rows, max_length)
            else:
                info, selection = _quantize_static(cfg, folder / VARIANT_FILES["fp32"], int8, reduce_range,
                                                   self.train_cfg, self.head, self.rows, max_length)
                log.log(logging.INFO if selection["met"] else logging.WARNING, "int8: %s", selection["reason"])
                if info is None:
                    extra["int8_selection"] = selection
            if info is not None:
                records["int8"] = {"fused_ops": optimize.fused_ops(int8), "quantization": info}
        return Graphs(self.head, max_length, inputs, records, extra, schema_version=self.head.schema_version)

    def reference(self, head: Classification, max_length: int) -> Reference:
        """The checkpoint's logits of the held-out rows (its own tokenizer), and its metrics."""
        logits = parity.reference_logits(self.model, self.tokenizer, self.rows.texts, max_length,
                                         truncation=head.truncation or "longest_first")
        return Reference(logits, parity.classification_metrics(logits, self.rows.labels, len(self.labels),
                                                               Decisions.of(head, head.labels), self.rows.groups))

    def check(self, folder: Path, manifest: Manifest, variant: str, reference: Reference) -> ParityResult:
        return parity.check_variant(folder, manifest, variant, self.rows, reference.logits, reference.metrics,
                                    self.cfg)

    def columns(self, reference: Reference) -> list[Column]:
        return parity.columns(reference.metrics)

    def tolerated(self, variant: str, manifest: Manifest) -> str | None:
        return tolerated(self.cfg.quantize, variant, manifest)


def tolerated(quantize_mode: str, variant: str, manifest: Manifest) -> str | None:
    """Why a failed ``variant`` does not fail the export, or None when it does.

    ``--quantize auto`` promises INT8 only where it holds: a scheme chosen on validation rows that
    misses the held-out gate is the same outcome as no scheme meeting the bounds (marked not
    servable, a warning, the fused fp32 graph served), not a broken export. ``--quantize static``
    or ``dynamic`` insists, and fails; so does a float variant that misses its bounds.
    """
    if variant != "int8" or quantize_mode != "auto":
        return None
    scheme = (manifest.variants["int8"].quantization or {}).get("scheme")
    return (f"int8 ({scheme}, chosen on validation rows) missed its parity bounds on the held-out rows, so it "
            f"is marked not servable and the default variant is {manifest.default_variant}; see the table "
            "above, or export with --quantize static / --int8-scheme NAME to insist on INT8")


def _max_length(train_cfg: Any, config: Any) -> int:
    """Training's max_length, capped by the model's position embeddings."""
    length = train_cfg.max_length if train_cfg is not None else 128
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # positions start after the padding index
    return int(min(length, limit)) if limit else int(length)


def _export_and_optimize(model: Any, checkpoint: Path, tmp: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Steps 1-2; returns the opt variant's info (or {} for --optimize none).

    If the eager graph gets no attention fusion, the SDPA graph is tried as well (DistilBERT's
    eager attention masks with a pattern the optimizer does not match; its SDPA export fuses),
    and whichever export fuses attention is kept, fp32 and opt together.
    """
    fp32, opt = tmp / VARIANT_FILES["fp32"], tmp / VARIANT_FILES["opt"]
    onnx_export.export_onnx(model, fp32, cfg.opset, OPTIMUM_TASK)
    if cfg.optimize == "none":
        return {}
    info = optimize.optimize(fp32, opt, cfg.optimize, model.config)
    info["attn_implementation"] = "eager"
    if cfg.optimize == "O2" and "Attention" in info["missing_fusions"]:
        info = _try_sdpa(checkpoint, tmp, cfg, info)
    if info["missing_fusions"]:
        log.warning("onnxruntime's optimizer found no %s fusion for %s; model.opt.onnx is "
                    "optimized without it (recorded in the manifest as missing_fusions)",
                    "/".join(info["missing_fusions"]), model.config.model_type)
    return info


def _try_sdpa(checkpoint: Path, tmp: Path, cfg: ExportConfig, eager: dict[str, Any]) -> dict[str, Any]:
    try:
        model, _ = ckpt.load_model(checkpoint, attn_implementation="sdpa")
    except (ValueError, ImportError):  # the architecture has no SDPA path
        return eager
    scratch = Path(tempfile.mkdtemp(prefix="deploykit-sdpa-", dir=tmp.parent))
    try:
        onnx_export.export_onnx(model, scratch / VARIANT_FILES["fp32"], cfg.opset, OPTIMUM_TASK)
        info = optimize.optimize(scratch / VARIANT_FILES["fp32"], scratch / VARIANT_FILES["opt"], cfg.optimize,
                                 model.config)
        if "Attention" in info["missing_fusions"]:
            return eager
        log.info("the SDPA export fuses attention where the eager one did not; keeping it")
        for item in scratch.iterdir():
            shutil.move(str(item), tmp / item.name)  # replaces fp32 and opt together
        info["attn_implementation"] = "sdpa"
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _search_rows(cfg: ExportConfig, train_cfg: Any, head: Classification, held: Any) -> Any:
    """The INT8 search's rows: the validation split, else (with a warning) the parity rows."""
    try:
        rows = parity.load_held_out(replace(cfg, split="validation", max_eval_samples=cfg.int8_search_samples),
                                    train_cfg, list(head.labels))
        return int8_fallback.SearchRows(rows.texts, rows.labels, "validation", rows.groups)
    except BadInputError as exc:
        log.warning("the int8 search scores the %s rows themselves (%s); the INT8 gate on them is "
                    "then no independent check", held.split, exc)
        n = cfg.int8_search_samples
        return int8_fallback.SearchRows(held.texts[:n], held.labels[:n], held.split,
                                        parity.ranking_groups(held.groups[:n] if held.groups else None))


def _scorer(cfg: ExportConfig, reference: Path, tokenizer_file: Path, train_cfg: Any, head: Classification,
            held: Any, max_length: int) -> Any:
    """The INT8 choice's judge: validation rows, the target bounds and the margin, against ``reference``."""
    rows = _search_rows(cfg, train_cfg, head, held)
    if len(rows.texts) < 200:
        log.warning("the int8 choice has only %d %s rows: agreement moves in steps of %.3f", len(rows.texts),
                    rows.split, 1 / len(rows.texts))
    margin = cfg.int8_search_margin
    if margin is None:  # the gate's own count on the parity rows wanders this far around the truth
        margin = int8_fallback.sampling_slack(cfg.int8_min_agreement, len(held.texts))
    return int8_fallback.Scorer(reference, tokenizer_file, rows, max_length, cfg.batch_size_list,
                                cfg.int8_min_agreement, target_f1_drop(cfg, head, rows.groups), margin=margin,
                                decisions=Decisions.of(head, head.labels))


def target_f1_drop(cfg: ExportConfig, head: Classification | None = None, groups: Any = None) -> float:
    """The quality loss (``parity.gated_f1``) an INT8 scheme may show on validation rows to be chosen:
    --int8-target-f1-drop, else half the gate's bound."""
    if cfg.int8_target_f1_drop is not None:
        return cfg.int8_target_f1_drop
    return parity.max_f1_drop(cfg, Decisions.of(head, head.labels) if head is not None else None, groups) / 2


def _quantize_dynamic(cfg: ExportConfig, src: Path, dst: Path, reduce_range: bool, train_cfg: Any,
                      head: Classification, held: Any, max_length: int) -> dict[str, Any]:
    """Step 3 (--quantize dynamic): float FFN layers as asked, else the accuracy-aware search, else all INT8."""
    scheme = quantize.Dynamic(reduce_range)
    if cfg.int8_float_ffn_layers:
        float_nodes = quantize.ffn_matmuls(src, cfg.int8_float_ffn_layers)
        scheme.write(src, dst, float_nodes)
        return {**scheme.info(src, dst, float_nodes),
                "fallback": {"mode": "float_ffn_layers", "layers": cfg.int8_float_ffn_layers}}
    if cfg.int8_fallback == "off":
        scheme.write(src, dst)
        return {**scheme.info(src, dst, []), "fallback": {"mode": "off"}}
    scorer = _scorer(cfg, src, dst.parent / "tokenizer.json", train_cfg, head, held, max_length)
    return int8_fallback.search(src, dst, scheme, scorer)


def _quantize_static(cfg: ExportConfig, src: Path, dst: Path, reduce_range: bool, train_cfg: Any,
                     head: Classification, held: Any, max_length: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Step 3 (--quantize auto/static): calibrate on training rows, then ``int8_schemes.choose``.

    Returns:
        (the ``quantization`` entry of model.int8.onnx, or None when none was written; the choice's record).
    """
    tokenizer_file = dst.parent / "tokenizer.json"
    calibration = int8_schemes.calibration(cfg, train_cfg, src, tokenizer_file, max_length)
    log.info("int8: calibrating on %d training rows of %s (%d unpadded batches)", len(calibration.texts),
             calibration.source, len(calibration.feeds))
    scorer = _scorer(cfg, src, tokenizer_file, train_cfg, head, held, max_length)
    scratch = Path(tempfile.mkdtemp(prefix="deploykit-int8-schemes-", dir=dst.parent.parent))
    try:
        return int8_schemes.choose(src, dst, cfg.int8_scheme, scorer, calibration, reduce_range, scratch,
                                   fallback=cfg.int8_fallback == "auto", keep_best=cfg.quantize == "static")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

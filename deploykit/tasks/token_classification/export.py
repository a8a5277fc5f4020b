"""token-classification's export hooks: the variants, the INT8 choice, the pipeline reference and parity.

The shared pipeline (``deploykit.export.pipeline``) calls ``Export``: it writes the plain fp32 graph
(optimum's token-classification exporter, eager attention) and ``tokenizer.json``, the fused one
(onnxruntime's transformer optimizer), and ``model.int8.onnx`` by ``--quantize``: static QDQ INT8
chosen by text-classification's measured ladder (``int8_schemes.choose``, with its accuracy-aware
float fallback) judged on entities (``int8.Scorer``), or dynamic INT8. Parity (``parity``) runs
each variant through the serving runtime against ``transformers.pipeline("token-classification")``
on the checkpoint. The manifest's head records the labels, the training data's tag scheme, the
default aggregation (``--aggregation``) and the windows' stride (the checkpoint's ``--stride``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploykit import checkpoint as ckpt
from deploykit.config import ParityConfig
from deploykit.errors import BadInputError
from deploykit.export import onnx_export, optimize, quantize
from deploykit.export.parity import Column, ParityResult
from deploykit.export.pipeline import Graphs
from deploykit.manifest import VARIANT_FILES, Manifest
from deploykit.tasks.classification import int8_fallback, int8_schemes
from deploykit.tasks.classification.export import tolerated
from deploykit.tasks.token_classification import data, int8, parity
from deploykit.tasks.token_classification.head import TokenClassification
from deploykit.tasks.token_classification.runtime import Runtime
from deploykit.tasks.token_classification.train import checkpoint_labels

log = logging.getLogger(__name__)

OPTIMUM_TASK = "token-classification"  # optimum's task: the encoder with its token-classification head


class WindowedExport:
    """What the span tasks' exports share: the tokenizer, the config, the fp32 graph (optimum's exporter for
    ``OPTIMUM_TASK``), the fused graph and INT8 by ``--quantize`` (the classifier's ladder, judged by the
    task's ``_scorer``, calibrated on its ``_calibration``). A task's ``Export`` sets ``OPTIMUM_TASK``,
    ``RUNTIME`` and ``UNITS`` and gives ``head``, ``stride_of``, ``_scorer`` and ``_calibration``; ``load``
    sets ``cfg``, ``model``, ``tokenizer``, ``checkpoint`` and ``max_length``."""

    OPTIMUM_TASK: str
    RUNTIME: Any
    UNITS = "sentences"

    def stride_of(self, head: Any) -> int:
        """The windows' stride a head records."""
        return head.stride

    def write(self, folder: Path) -> Graphs:
        """Steps 1-3: tokenizer, config, fp32 and fused graphs, then INT8 by ``--quantize``."""
        cfg, model = self.cfg, self.model
        tokenizer_file = onnx_export.write_tokenizer(self.tokenizer, folder / "tokenizer.json", self.max_length)
        shutil.copy(self.checkpoint / "config.json", folder / "config.json")
        fp32, opt = folder / VARIANT_FILES["fp32"], folder / VARIANT_FILES["opt"]
        onnx_export.export_onnx(model, fp32, cfg.opset, self.OPTIMUM_TASK)
        head = self.head()
        inputs = self.RUNTIME.of_graph(fp32, tokenizer_file, self.max_length, stride=self.stride_of(head)).input_names
        records: dict[str, dict[str, Any]] = {"fp32": {"fused_ops": {}}}
        if cfg.optimize != "none":
            info = optimize.optimize(fp32, opt, cfg.optimize, model.config)
            if info["missing_fusions"]:
                log.warning("onnxruntime's optimizer found no %s fusion for %s; model.opt.onnx is optimized "
                            "without it (recorded as missing_fusions)", "/".join(info["missing_fusions"]),
                            model.config.model_type)
            records["opt"] = {"fused_ops": info["fused_ops"], "optimization": {
                "level": info["level"], "missing_fusions": info["missing_fusions"], "attn_implementation": "eager"}}
        extra: dict[str, Any] = {}
        if cfg.quantize != "none":
            quantization, selection = self._quantize(folder, head, records)
            if quantization is not None:
                records["int8"] = {"fused_ops": optimize.fused_ops(folder / VARIANT_FILES["int8"]),
                                   "quantization": quantization}
            elif selection is not None:
                extra["int8_selection"] = selection
        return Graphs(head, self.max_length, inputs, records, extra)

    def _quantize(self, folder: Path, head: Any, records: dict[str, Any]) -> tuple[Any, Any]:
        """Step 3: (the ``quantization`` record of model.int8.onnx or None, the selection record)."""
        cfg = self.cfg
        reduce_range = quantize.choose_reduce_range(cfg.reduce_range)
        src, dst = folder / VARIANT_FILES["fp32"], folder / VARIANT_FILES["int8"]
        scorer = self._scorer(src, folder / "tokenizer.json", head)
        if cfg.quantize == "dynamic":
            source = folder / VARIANT_FILES["opt" if "opt" in records else "fp32"]
            scheme = quantize.Dynamic(reduce_range)
            if cfg.int8_fallback == "off":
                scheme.write(source, dst)
                return {**scheme.info(source, dst, []), "fallback": {"mode": "off"}}, None
            return int8_fallback.search(source, dst, scheme, scorer), None
        calibration = self._calibration(src, folder / "tokenizer.json", head)
        log.info("int8: calibrating on %d training %s of %s (%d unpadded batches)", len(calibration.texts), self.UNITS,
                 calibration.source, len(calibration.feeds))
        scratch = Path(tempfile.mkdtemp(prefix="deploykit-int8-schemes-", dir=folder.parent))
        try:
            info, selection = int8_schemes.choose(src, dst, cfg.int8_scheme, scorer, calibration, reduce_range,
                                                  scratch, fallback=cfg.int8_fallback == "auto",
                                                  keep_best=cfg.quantize == "static")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.log(logging.INFO if selection["met"] else logging.WARNING, "int8: %s", selection["reason"])
        return info, (selection if info is None else None)


class Export(WindowedExport):
    """The export hooks of token-classification (see ``deploykit.export.pipeline.Export``).

    Args:
        cfg: The stage's options (``ExportConfig`` for export, ``VerifyConfig`` for verify).
        checkpoint: The validated checkpoint.

    Raises:
        BadInputError: optimum-onnx cannot export the architecture for token classification.
    """

    OPTIMUM_TASK = OPTIMUM_TASK
    RUNTIME = Runtime

    def __init__(self, cfg: ParityConfig, checkpoint: Path) -> None:
        self.cfg, self.checkpoint = cfg, checkpoint
        onnx_export.check_supported(checkpoint, OPTIMUM_TASK)
        self.labels = checkpoint_labels(checkpoint)
        self.train_cfg = ckpt.train_config(checkpoint)
        self.dcfg = parity.data_config(cfg, self.train_cfg)

    def check_artifact(self, manifest: Manifest) -> None:
        """Refuse a checkpoint with other labels than the artifact's."""
        exported = list(manifest.head_as(TokenClassification).labels)
        if self.labels != exported:
            raise BadInputError(f"{self.checkpoint} has labels {self.labels} but {manifest.where.parent} was "
                                f"exported with {exported}; pass the checkpoint the artifact came from")
        self.manifest = manifest

    def load(self) -> None:
        """The eager model and tokenizer, then the held-out sentences (and the long texts made of them)."""
        self.model, self.tokenizer = onnx_export.load_eager(self.checkpoint)
        self.backend = data.backend(self.tokenizer)
        self.max_length = max_length(self.train_cfg, self.model.config)
        self.rows = parity.load_held_out(self.cfg, self.train_cfg, self.backend, self.labels, self.max_length)

    def head(self) -> TokenClassification:
        """The manifest head: labels, the data's scheme, the default aggregation and the stride."""
        dcfg = self.dcfg
        return TokenClassification(tuple(self.labels), "logits", dcfg.tag_scheme, self.cfg.aggregation,
                                   min(dcfg.stride, self.max_length - 3))

    def _calibration(self, src: Path, tokenizer_file: Path, head: TokenClassification) -> int8_schemes.Calibration:
        """The first ``--calibration-samples`` training sentences (never held-out ones), tokenized as
        served (windows), as unpadded calibration feeds."""
        splits = data.load_splits(replace(self.dcfg, max_train_samples=None), self.backend)
        texts = splits.train.texts[:self.cfg.calibration_samples]
        if not texts:
            raise BadInputError(f"the training split of {self.dcfg.data} has no rows to calibrate INT8 on")
        runtime = Runtime.of_graph(src, tokenizer_file, self.max_length, stride=self.stride_of(head))
        return int8_schemes.Calibration(quantize.calibration_feeds(runtime, texts), parity.source_name(self.dcfg),
                                        "train", list(texts), self.dcfg.text_column if self.dcfg.entities_column else None)

    def _search_rows(self) -> int8.SearchRows:
        """The INT8 choice's sentences: the validation split, else (with a warning) the parity rows."""
        n = self.cfg.int8_search_samples
        try:
            rows, _ = data.held_out(self.dcfg, "validation", self.backend, self.labels)
            texts, entities, split = rows.texts[:n], rows.entities[:n], "validation"
        except BadInputError as exc:
            log.warning("the int8 search scores the %s rows themselves (%s); the INT8 gate on them is then no "
                        "independent check", self.rows.split, exc)
            texts, entities, split = self.rows.texts[:n], self.rows.entities[:n], self.rows.split
        return int8.SearchRows(list(texts), list(entities), data.words(self.backend, list(texts)), split)

    def _scorer(self, reference: Path, tokenizer_file: Path, head: TokenClassification) -> int8.Scorer:
        cfg = self.cfg
        rows = self._search_rows()
        if len(rows.texts) < 200:
            log.warning("the int8 choice has only %d %s sentences: agreement moves in steps of %.3f",
                        len(rows.texts), rows.split, 1 / max(len(rows.texts), 1))
        margin = cfg.int8_search_margin
        if margin is None:  # the gate's own count on the parity rows wanders this far around the truth
            margin = int8_fallback.sampling_slack(cfg.int8_min_span_agreement, len(self.rows.texts))
        return int8.Scorer(reference, tokenizer_file, rows, self.max_length, head.stride, cfg.batch_size_list,
                           self.labels, head.aggregation, cfg.int8_min_span_agreement,
                           cfg.int8_max_entity_f1_drop / 2, margin=margin)

    def reference(self, head: TokenClassification, max_length: int) -> parity.Reference:
        """The transformers pipeline on the checkpoint: every aggregation, the artifact's windows."""
        return parity.reference(self.model, self.tokenizer, self.rows, max_length, head.stride, head.aggregation)

    def check(self, folder: Path, manifest: Manifest, variant: str, reference: parity.Reference) -> ParityResult:
        return parity.check_variant(folder, manifest, variant, self.rows, reference, self.cfg)

    def columns(self, reference: parity.Reference) -> list[Column]:
        return parity.columns(reference)

    def tolerated(self, variant: str, manifest: Manifest) -> str | None:
        return tolerated(self.cfg.quantize, variant, manifest)


def max_length(train_cfg: Any, config: Any) -> int:
    """Training's max_length, capped by the model's position embeddings (RoBERTa's start after the
    padding index)."""
    length = train_cfg.max_length if train_cfg is not None else 128
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    return int(min(length, limit)) if limit else int(length)

"""Export: a checkpoint to a verified ONNX artifact folder (fp32, fused, INT8), and its re-check.

``run(cfg)`` reads ``RUN/checkpoint/`` and writes ``ARTIFACT/`` in five steps, each in its own
module: export (``onnx_export``), optimize (``optimize``), quantize (``quantize``; the choice of
INT8 scheme is ``int8_schemes``, the accuracy-aware choice of operators to keep in float
``int8_fallback``), parity (``parity``, through the serving runtime) and the manifest (the
contract ``deploykit.manifest``, with ``provenance``). ``verify(cfg)`` re-checks an existing artifact: every file's sha256, then
parity of every variant against the checkpoint, on the rows export recorded unless told others.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploykit import tasks
from deploykit.config import GENERATION, ExportConfig, VerifyConfig
from deploykit.tasks.classification.train import checkpoint_labels
from deploykit.errors import BadInputError, ParityError

log = logging.getLogger(__name__)

__all__ = ["run", "verify"]

FILES = {"fp32": "model.onnx", "opt": "model.opt.onnx", "int8": "model.int8.onnx"}
PRECISION = {"fp32": "fp32", "opt": "fp32", "int8": "int8"}


def _prepare_out(cfg: ExportConfig) -> Path:
    """Refuse to replace another artifact (unless --overwrite) and fail early on an unwritable --out."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        what = "another artifact" if (out / "manifest.json").is_file() else "other files"
        raise BadInputError(f"--out {out} already holds {what}; pass --overwrite to replace it "
                            f"or choose another --out")
    try:  # the real writes happen in a sibling temporary folder, so probe exactly that
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent))
    except OSError as exc:
        raise BadInputError(f"cannot write the artifact folder {out} ({exc.strerror or exc}); "
                            f"choose a writable --out") from None
    return out


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
    from deploykit.export import onnx_export, optimize

    fp32, opt = tmp / FILES["fp32"], tmp / FILES["opt"]
    onnx_export.export_onnx(model, fp32, cfg.opset)
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
    from deploykit import checkpoint as ckpt
    from deploykit.export import onnx_export, optimize

    try:
        model, _ = ckpt.load_model(checkpoint, attn_implementation="sdpa")
    except (ValueError, ImportError):  # the architecture has no SDPA path
        return eager
    scratch = Path(tempfile.mkdtemp(prefix="deploykit-sdpa-", dir=tmp.parent))
    try:
        onnx_export.export_onnx(model, scratch / FILES["fp32"], cfg.opset)
        info = optimize.optimize(scratch / FILES["fp32"], scratch / FILES["opt"], cfg.optimize, model.config)
        if "Attention" in info["missing_fusions"]:
            return eager
        log.info("the SDPA export fuses attention where the eager one did not; keeping it")
        for item in scratch.iterdir():
            shutil.move(str(item), tmp / item.name)  # replaces fp32 and opt together
        info["attn_implementation"] = "sdpa"
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _search_rows(cfg: ExportConfig, train_cfg: Any, labels: list[str], held: Any) -> Any:
    """The INT8 search's rows: the validation split, else (with a warning) the parity rows."""
    from deploykit.export import parity
    from deploykit.export.int8_fallback import SearchRows

    try:
        rows = parity.load_held_out(replace(cfg, split="validation", max_eval_samples=cfg.int8_search_samples),
                                    train_cfg, labels)
        return SearchRows(rows.texts, rows.labels, "validation")
    except BadInputError as exc:
        log.warning("the int8 search scores the %s rows themselves (%s); the INT8 gate on them is "
                    "then no independent check", held.split, exc)
        return SearchRows(held.texts[:cfg.int8_search_samples], held.labels[:cfg.int8_search_samples], held.split)


def _scorer(cfg: ExportConfig, reference: Path, tokenizer_file: Path, train_cfg: Any, labels: list[str],
            held: Any, max_length: int) -> Any:
    """The INT8 choice's judge: validation rows, the target bounds and the margin, against ``reference``."""
    from deploykit.export import int8_fallback

    rows = _search_rows(cfg, train_cfg, labels, held)
    if len(rows.texts) < 200:
        log.warning("the int8 choice has only %d %s rows: agreement moves in steps of %.3f", len(rows.texts),
                    rows.split, 1 / len(rows.texts))
    margin = cfg.int8_search_margin
    if margin is None:  # the gate's own count on the parity rows wanders this far around the truth
        margin = int8_fallback.sampling_slack(cfg.int8_min_agreement, len(held.texts))
    return int8_fallback.Scorer(reference, tokenizer_file, rows, max_length, cfg.batch_size_list,
                                cfg.int8_min_agreement, target_f1_drop(cfg), margin=margin)


def target_f1_drop(cfg: ExportConfig) -> float:
    """The macro-F1 loss an INT8 scheme may show on validation rows to be chosen."""
    return cfg.int8_max_f1_drop / 2 if cfg.int8_target_f1_drop is None else cfg.int8_target_f1_drop


def _quantize_dynamic(cfg: ExportConfig, src: Path, dst: Path, reduce_range: bool, train_cfg: Any,
                      labels: list[str], held: Any, max_length: int) -> dict[str, Any]:
    """Step 3 (--quantize dynamic): float FFN layers as asked, else the accuracy-aware search, else all INT8."""
    from deploykit.export import int8_fallback, quantize

    scheme = quantize.Dynamic(reduce_range)
    if cfg.int8_float_ffn_layers:
        float_nodes = quantize.ffn_matmuls(src, cfg.int8_float_ffn_layers)
        scheme.write(src, dst, float_nodes)
        return {**scheme.info(src, dst, float_nodes),
                "fallback": {"mode": "float_ffn_layers", "layers": cfg.int8_float_ffn_layers}}
    if cfg.int8_fallback == "off":
        scheme.write(src, dst)
        return {**scheme.info(src, dst, []), "fallback": {"mode": "off"}}
    scorer = _scorer(cfg, src, dst.parent / "tokenizer.json", train_cfg, labels, held, max_length)
    return int8_fallback.search(src, dst, scheme, scorer)


def _quantize_static(cfg: ExportConfig, src: Path, dst: Path, reduce_range: bool, train_cfg: Any,
                     labels: list[str], held: Any, max_length: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Step 3 (--quantize auto/static): calibrate on training rows, then ``int8_schemes.choose``.

    Returns:
        (the ``quantization`` entry of model.int8.onnx, or None when none was written; the choice's record).
    """
    from deploykit.export import int8_schemes

    tokenizer_file = dst.parent / "tokenizer.json"
    calibration = int8_schemes.calibration(cfg, train_cfg, src, tokenizer_file, max_length)
    log.info("int8: calibrating on %d training rows of %s (%d unpadded batches)", len(calibration.texts),
             calibration.source, len(calibration.feeds))
    scorer = _scorer(cfg, src, tokenizer_file, train_cfg, labels, held, max_length)
    scratch = Path(tempfile.mkdtemp(prefix="deploykit-int8-schemes-", dir=dst.parent.parent))
    try:
        return int8_schemes.choose(src, dst, cfg.int8_scheme, scorer, calibration, reduce_range, scratch,
                                   fallback=cfg.int8_fallback == "auto", keep_best=cfg.quantize == "static")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def hard_failures(quantize_mode: str, results: list[Any], manifest: Any) -> list[Any]:
    """The parity results that fail the export (exit 3 unless ``--allow-parity-failure``).

    Every failed variant does, except ``int8`` under ``--quantize auto``: auto promises INT8 only
    where it holds, so a scheme chosen on validation rows that misses the held-out gate is the
    same outcome as no scheme meeting the bounds (marked not servable, a warning, the fused fp32
    graph served), not a broken export. ``--quantize static`` or ``dynamic`` insists, and fails.

    Args:
        quantize_mode: ``cfg.quantize``.
        results: ``parity.check_variant`` results (``name``, ``passed``).
        manifest: The written manifest (its ``default_variant`` and the int8 record, for the warning).

    Returns:
        The failed results that count.
    """
    failed = [r for r in results if not r.passed]
    if quantize_mode == "auto" and any(r.name == "int8" for r in failed):
        scheme = (manifest.variants["int8"].quantization or {}).get("scheme")
        log.warning("int8 (%s, chosen on validation rows) missed its parity bounds on the held-out rows, so it "
                    "is marked not servable and the default variant is %s; see the table above, or export with "
                    "--quantize static / --int8-scheme NAME to insist on INT8", scheme, manifest.default_variant)
        failed = [r for r in failed if r.name != "int8"]
    return failed


def run(cfg: ExportConfig) -> Path:
    """Export a checkpoint to a verified artifact folder.

    Args:
        cfg: The export options.

    Returns:
        The artifact folder.

    Raises:
        BadInputError: Not a checkpoint, no tokenizer or labels, unsupported architecture,
            --out holds another artifact (without --overwrite) or is not writable, bad data.
        ParityError: A variant missed its parity bounds (after the artifact is written with
            that variant marked not servable), unless ``cfg.allow_parity_failure`` — or, with
            ``--quantize auto``, the variant is ``int8`` (a warning; the fused graph is served).
    """
    import onnxruntime as ort

    from deploykit import checkpoint as ckpt
    from deploykit.export import onnx_export, optimize, parity, provenance, quantize
    from deploykit.files import atomic_folder
    from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest, Variant
    from deploykit.tasks.classification.head import Classification
    from deploykit.tasks.classification.runtime import Runtime

    if tasks.checkpoint_task(cfg.checkpoint) == GENERATION:
        from deploykit.export import generation

        return generation.run(cfg)
    checkpoint = ckpt.validate(cfg.checkpoint)
    onnx_export.check_supported(checkpoint)
    labels = checkpoint_labels(checkpoint)
    train_cfg = ckpt.train_config(checkpoint)
    out = _prepare_out(cfg)
    held = parity.load_held_out(cfg, train_cfg, labels)
    log.info("parity rows: %d from the %s split of %s", len(held.texts), held.split, held.source)

    model, tokenizer = onnx_export.load_eager(checkpoint)
    max_length = _max_length(train_cfg, model.config)
    reference = parity.reference_logits(model, tokenizer, held.texts, max_length)
    reference_metrics = parity.classification_metrics(reference, held.labels, len(labels))

    with atomic_folder(out) as tmp:
        tokenizer_file = onnx_export.write_tokenizer(tokenizer, tmp / "tokenizer.json", max_length)
        shutil.copy(checkpoint / "config.json", tmp / "config.json")
        opt_info = _export_and_optimize(model, checkpoint, tmp, cfg)
        inputs = Runtime.of_graph(tmp / FILES["fp32"], tokenizer_file, max_length).input_names

        records: dict[str, dict[str, Any]] = {"fp32": {"fused_ops": {}}}
        if opt_info:
            records["opt"] = {"fused_ops": opt_info["fused_ops"], "optimization": {
                "level": opt_info["level"], "missing_fusions": opt_info["missing_fusions"],
                "attn_implementation": opt_info["attn_implementation"]}}
        extra: dict[str, Any] = {}
        if cfg.quantize != "none":
            reduce_range = quantize.choose_reduce_range(cfg.reduce_range)
            if cfg.quantize == "dynamic":
                source = "opt" if opt_info else "fp32"
                info = _quantize_dynamic(cfg, tmp / FILES[source], tmp / FILES["int8"], reduce_range,
                                         train_cfg, labels, held, max_length)
            else:
                info, selection = _quantize_static(cfg, tmp / FILES["fp32"], tmp / FILES["int8"], reduce_range,
                                                   train_cfg, labels, held, max_length)
                log.log(logging.INFO if selection["met"] else logging.WARNING, "int8: %s", selection["reason"])
                if info is None:
                    extra["int8_selection"] = selection
            if info is not None:
                records["int8"] = {"fused_ops": optimize.fused_ops(tmp / FILES["int8"]), "quantization": info}

        # The draft manifest (nothing servable yet) is what the runtime loads each variant by.
        draft = Manifest.create(
            tmp, name=cfg.name, head=Classification(tuple(labels)), max_length=max_length, inputs=inputs,
            variants=[Variant(name, FILES[name], PRECISION[name], servable=False, **record)
                      for name, record in records.items()],
            default=cfg.default_variant, reference_metrics=reference_metrics,
            evaluation=held.record(cfg.batch_size_list),
            provenance=provenance.provenance(checkpoint, cfg.opset, held.data_sha256, quantize.cpu_has_vnni()),
            extra=extra)
        results = [parity.check_variant(tmp, draft, name, held, reference, reference_metrics, cfg)
                   for name in draft.variants]
        report = parity.table(results, reference_metrics)
        log.info("parity on %d %s rows:\n%s", len(held.texts), held.split, report)
        manifest = draft.judged({r.name: (r.parity(), r.metrics, r.passed) for r in results},
                                cfg.default_variant)
        manifest.write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
    int8 = manifest.variants.get("int8")
    if int8 is not None and int8.servable and not int8.batch_independent and manifest.default_variant != "int8":
        log.warning("int8 (%s) passed parity, but a text's logits move by up to %.3g with its batch mates "
                    "(more than %g), so the default variant is %s; serve it by name (--variant int8) to accept "
                    "that", (int8.quantization or {}).get("scheme"), int8.batch_dependence,
                    BATCH_INDEPENDENCE_ATOL, manifest.default_variant)
    log.info("wrote %s (default variant %s; onnxruntime %s)", out, manifest.default_variant, ort.__version__)

    failed = hard_failures(cfg.quantize, results, manifest)
    if failed:
        message = (f"{len(failed)} variant(s) missed their parity bounds and are marked not "
                   f"servable in {out / 'manifest.json'}:\n{report}")
        if not cfg.allow_parity_failure:
            raise ParityError(message + "\n(pass --allow-parity-failure to accept them as not servable)")
        log.warning("%s", message)
    return out


def _verify_rows(cfg: VerifyConfig, recorded: Any) -> VerifyConfig:
    """The rows verify checks: those export recorded, unless the user asked for others."""
    if cfg.rows_asked() or recorded is None:
        return replace(cfg, split=cfg.split or "test")
    return replace(cfg, data=recorded.source, split=recorded.split, text_column=recorded.text_column,
                   label_column=recorded.label_column, max_eval_samples=recorded.n)


def verify(cfg: VerifyConfig) -> dict[str, Any]:
    """Re-check an artifact: every file's sha256 against the manifest, then parity of each variant.

    Parity runs on the rows export checked (source, split, columns and count recorded in the
    manifest, their hash compared), so verify re-checks what export claimed; ``--data``,
    ``--split``, ``--text-column``, ``--label-column`` or ``--max-eval-samples`` choose other rows.

    Args:
        cfg: The artifact, the checkpoint it came from, data and tolerances.

    Returns:
        ``{"reference_metrics", "variants": {name: {"parity", "metrics"}}, "table", "rows"}``;
        ``rows`` says which rows were checked and whether they are the ones export checked.

    Raises:
        BadInputError: Not an artifact, not a checkpoint, or a checkpoint with other labels.
        IntegrityError: A file is missing, truncated or changed (exit code 4).
        ParityError: A variant the manifest marks servable misses its bounds (exit code 3).
    """
    from deploykit import checkpoint as ckpt
    from deploykit.export import onnx_export, parity
    from deploykit.files import sha256_file
    from deploykit.manifest import Manifest
    from deploykit.tasks.classification.head import Classification

    artifact = Path(cfg.artifact)
    manifest = Manifest.verify(artifact)
    log.info("all %d files of %s match their sha256", len(manifest.files), artifact)
    if manifest.task == GENERATION:
        from deploykit.export import generation

        return generation.verify(cfg, manifest, ckpt.validate(cfg.checkpoint))
    checkpoint = ckpt.validate(cfg.checkpoint)
    labels = checkpoint_labels(checkpoint)
    if labels != list(manifest.head_as(Classification).labels):
        raise BadInputError(f"{checkpoint} has labels {labels} but {artifact} was exported with "
                            f"{list(manifest.head_as(Classification).labels)}; pass the checkpoint the artifact came from")
    recorded = manifest.provenance.get("checkpoint_sha256")
    weights = checkpoint / "model.safetensors"
    if recorded and weights.is_file() and sha256_file(weights) != recorded:
        log.warning("%s differs from the checkpoint the artifact was exported from "
                    "(weights sha256 mismatch); parity below compares against it anyway", weights)
    train_cfg = ckpt.train_config(checkpoint)
    rows_cfg = _verify_rows(cfg, manifest.evaluation)
    held = parity.load_held_out(rows_cfg, train_cfg, labels)
    rows = held.record(rows_cfg.batch_size_list)
    exported = manifest.evaluation
    same = None if exported is None or exported.sha256 is None else rows.sha256 == exported.sha256
    if cfg.rows_asked():
        log.info("verify: parity on %s, as asked (export checked %s)", rows.describe(),
                 exported.describe() if exported else "rows it did not record")
    elif same is False:
        log.warning("verify: parity on %s, the rows export recorded, but they are not the same rows "
                    "any more (their sha256 differs: the data changed since export)", rows.describe())
    else:
        log.info("verify: parity on %s, the rows export checked%s", rows.describe(),
                 " (same sha256)" if same else "")
    model, tokenizer = onnx_export.load_eager(checkpoint)
    reference = parity.reference_logits(model, tokenizer, held.texts, manifest.max_length)
    reference_metrics = parity.classification_metrics(reference, held.labels, len(labels))
    results = [parity.check_variant(artifact, manifest, name, held, reference, reference_metrics, cfg)
               for name in manifest.variants]
    report = parity.table(results, reference_metrics)
    log.info("parity of %s on %s:\n%s", artifact, rows.describe(), report)
    failed = [r.name for r in results if not r.passed and manifest.variants[r.name].servable]
    if failed:
        raise ParityError(f"variant(s) {', '.join(failed)} of {artifact}, marked servable, missed "
                          f"their parity bounds on {rows.describe()}:\n{report}\nre-export the "
                          "artifact from this checkpoint")
    return {"reference_metrics": reference_metrics, "table": report,
            "rows": {**rows.to_json(), "as_exported": not cfg.rows_asked(), "same_as_export": same},
            "variants": {r.name: {"parity": r.parity(), "metrics": r.metrics} for r in results}}

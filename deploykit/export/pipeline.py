"""The export and verify stages, written once for every task.

``run(cfg)`` reads ``RUN/checkpoint/`` and writes ``ARTIFACT/`` in five steps; the checkpoint's
task (its folder's ``export.Export``, found through the task registry) supplies what differs:

1. export: the task writes its graphs, ``tokenizer.json`` and ``config.json`` (``Export.write``,
   with the shared ``onnx_export``);
2. optimize: fused graphs (``optimize``);
3. quantize: the task's INT8 choice (``quantize``);
4. parity: every variant, run by the task's serving runtime, against the PyTorch reference on
   held-out rows (``Export.reference``, ``Export.check``: one ``parity.ParityResult`` type);
5. the manifest (``deploykit.manifest``, with ``provenance``), written last, inside an atomic
   folder (``deploykit.files.atomic_folder``), then the gate: a variant that misses its bounds
   is marked not servable, and fails the export (exit 3) unless the task tolerates it
   (``Export.tolerated``: an INT8 variant export may drop) or ``--allow-parity-failure``.

``verify(cfg)`` re-checks an existing artifact: every file's sha256, then parity of every
variant against the checkpoint, on the rows export recorded unless told others.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

from deploykit import checkpoint as ckpt
from deploykit import data, tasks
from deploykit.config import ExportConfig, ParityConfig, VerifyConfig, check_task
from deploykit.errors import BadInputError, ParityError
from deploykit.export.parity import Column, ParityResult, table
from deploykit.files import atomic_folder, sha256_file
from deploykit.manifest import (BATCH_INDEPENDENCE_ATOL, SCHEMA_VERSION, VARIANT_FILES, VARIANT_PRECISION, Head,
                                Manifest, ParityRows, Variant)

log = logging.getLogger(__name__)


@dataclass
class Graphs:
    """What a task's ``Export.write`` put into the artifact folder, for the manifest."""

    head: Head                          # the task's manifest fields
    max_length: int                     # tokens the runtime takes per row (or per sequence)
    inputs: list[str]                   # the graphs' input names
    records: dict[str, dict[str, Any]]  # variant name -> Variant fields (fused_ops, optimization, quantization)
    extra: dict[str, Any] = field(default_factory=dict)  # top-level manifest keys (int8_selection, ...)
    schema_version: int = SCHEMA_VERSION  # the manifest schema the head needs


class Rows(Protocol):
    """Held-out rows as a task reads them (texts and labels, prompts and completions, ...)."""

    data_sha256: str

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """The manifest's ``evaluation`` record of these rows (verify re-checks them)."""


class Reference(Protocol):
    """The PyTorch checkpoint's answers on the held-out rows."""

    metrics: dict[str, Any]  # the manifest's reference_metrics


class Export(Protocol):
    """What export and verify call on the task (``deploykit/tasks/<task>/export.py``'s ``Export``,
    constructed with the stage's config and the validated checkpoint; cheap until ``load``)."""

    rows: Rows

    def load(self) -> None:
        """Read the held-out rows and load the PyTorch model."""

    def check_artifact(self, manifest: Manifest) -> None:
        """verify: refuse a checkpoint that cannot be the artifact's (other labels, ...)."""

    def write(self, folder: Path) -> Graphs:
        """export: write the graphs, ``tokenizer.json`` and ``config.json`` into ``folder``."""

    def reference(self, head: Head, max_length: int) -> Reference:
        """The PyTorch reference on the held-out rows."""

    def check(self, folder: Path, manifest: Manifest, variant: str, reference: Reference) -> ParityResult:
        """Parity of one variant, run as served, against the reference."""

    def columns(self, reference: Reference) -> list[Column]:
        """The parity table's columns."""

    def tolerated(self, variant: str, manifest: Manifest) -> str | None:
        """Why a failed ``variant`` does not fail the export (a warning), or None if it does."""


def prepare_out(cfg: ExportConfig) -> Path:
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


def fatal_failures(results: Sequence[ParityResult], manifest: Manifest, exporter: Export) -> list[ParityResult]:
    """The parity results that fail the export (exit 3 unless ``--allow-parity-failure``): every
    failed variant, except those the task tolerates (logged as warnings with the reason)."""
    fatal = []
    for result in results:
        if result.passed:
            continue
        why = exporter.tolerated(result.name, manifest)
        if why is None:
            fatal.append(result)
        else:
            log.warning("%s", why)
    return fatal


def _warn_batch_dependent(manifest: Manifest) -> None:
    """A servable variant whose outputs move with batch mates is never the default: say so."""
    for name, variant in manifest.variants.items():
        if variant.servable and not variant.batch_independent and name != manifest.default_variant:
            log.warning("%s (%s) passed parity, but a row's outputs move by up to %.3g with its batch mates "
                        "(more than %g), so the default variant is %s; serve it by name (--variant %s) to "
                        "accept that", name, (variant.quantization or {}).get("scheme"), variant.batch_dependence,
                        BATCH_INDEPENDENCE_ATOL, manifest.default_variant, name)


def _exporter(task: tasks.Task, cfg: ParityConfig, checkpoint: Path) -> Export:
    return task.part("export").Export(cfg, checkpoint)


def run(cfg: ExportConfig) -> Path:
    """Export a checkpoint to a verified artifact folder.

    Args:
        cfg: The export options.

    Returns:
        The artifact folder.

    Raises:
        BadInputError: Not a checkpoint, an option of another task, no tokenizer or labels, an
            unsupported architecture, --out holds another artifact (without --overwrite) or is not
            writable, bad data.
        ParityError: A variant missed its parity bounds (after the artifact is written with that
            variant marked not servable), unless the task tolerates it or
            ``cfg.allow_parity_failure``.
    """
    import onnxruntime as ort

    from deploykit.export import provenance, quantize

    checkpoint = ckpt.validate(cfg.checkpoint)
    task = tasks.of_checkpoint(checkpoint)
    check_task(cfg, task.name, f"{checkpoint} is a {task.name} checkpoint")
    if cfg.data is not None:
        data.check_source(cfg.data)  # before the task's exporter loads torch (seconds)
    exporter = _exporter(task, cfg, checkpoint)
    out = prepare_out(cfg)
    exporter.load()
    rows = exporter.rows.record(cfg.batch_size_list)
    log.info("parity rows: %s", rows.describe())

    with atomic_folder(out) as tmp:
        graphs = exporter.write(tmp)
        reference = exporter.reference(graphs.head, graphs.max_length)
        # The draft manifest (nothing servable yet) is what the runtime loads each variant by.
        draft = Manifest.create(
            tmp, name=cfg.name, head=graphs.head, max_length=graphs.max_length, inputs=graphs.inputs,
            variants=[Variant(name, VARIANT_FILES[name], VARIANT_PRECISION[name], servable=False, **record)
                      for name, record in graphs.records.items()],
            default=cfg.default_variant, reference_metrics=reference.metrics, evaluation=rows,
            provenance=provenance.provenance(checkpoint, cfg.opset, exporter.rows.data_sha256,
                                             quantize.cpu_has_vnni()),
            extra=graphs.extra, schema_version=graphs.schema_version)
        results = [exporter.check(tmp, draft, name, reference) for name in draft.variants]
        report = table(results, exporter.columns(reference))
        log.info("parity on %s:\n%s", rows.describe(), report)
        manifest = draft.judged({r.name: (r.parity(), r.metrics, r.passed) for r in results}, cfg.default_variant)
        manifest.write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
    _warn_batch_dependent(manifest)
    log.info("wrote %s (default variant %s; onnxruntime %s)", out, manifest.default_variant, ort.__version__)

    failed = fatal_failures(results, manifest, exporter)
    if failed:
        message = (f"{len(failed)} variant(s) missed their parity bounds and are marked not "
                   f"servable in {out / 'manifest.json'}:\n{report}")
        if not cfg.allow_parity_failure:
            raise ParityError(message + "\n(pass --allow-parity-failure to accept them as not servable)")
        log.warning("%s", message)
    return out


def _verify_rows(cfg: VerifyConfig, recorded: ParityRows | None) -> VerifyConfig:
    """The rows verify checks: those export recorded (its source, split, count and columns), unless
    the user asked for others."""
    if cfg.rows_asked() or recorded is None:
        return replace(cfg, split=cfg.split or "test")
    fields = {f.name for f in dataclasses.fields(cfg)}
    columns = {key: value for key, value in recorded.columns.items() if key in fields}
    return replace(cfg, data=recorded.source, split=recorded.split, max_eval_samples=recorded.n, **columns)


def verify(cfg: VerifyConfig) -> dict[str, Any]:
    """Re-check an artifact: every file's sha256 against the manifest, then parity of each variant.

    Parity runs on the rows export checked (source, split, columns and count recorded in the
    manifest, their hash compared), so verify re-checks what export claimed; ``--data``,
    ``--split``, a column option or ``--max-eval-samples`` choose other rows.

    Args:
        cfg: The artifact, the checkpoint it came from, data and tolerances.

    Returns:
        ``{"reference_metrics", "variants": {name: {"parity", "metrics"}}, "table", "rows"}``;
        ``rows`` says which rows were checked and whether they are the ones export checked.

    Raises:
        BadInputError: Not an artifact, not a checkpoint, a checkpoint of another task or with
            other labels, an option of another task.
        IntegrityError: A file is missing, truncated or changed (exit code 4).
        ParityError: A variant the manifest marks servable misses its bounds (exit code 3).
    """
    artifact = Path(cfg.artifact)
    manifest = Manifest.verify(artifact)
    log.info("all %d files of %s match their sha256", len(manifest.files), artifact)
    task = tasks.get(manifest.task)
    check_task(cfg, task.name, f"{artifact} is a {task.name} artifact")
    checkpoint = ckpt.validate(cfg.checkpoint)
    found = tasks.checkpoint_task(checkpoint)
    if found != manifest.task:
        raise BadInputError(f"{checkpoint} is a {found} checkpoint but {artifact} is a {manifest.task} "
                            "artifact; pass the checkpoint the artifact came from")
    recorded = manifest.provenance.get("checkpoint_sha256")
    weights = checkpoint / "model.safetensors"
    if recorded and weights.is_file() and sha256_file(weights) != recorded:
        log.warning("%s differs from the checkpoint the artifact was exported from "
                    "(weights sha256 mismatch); parity below compares against it anyway", weights)
    rows_cfg = _verify_rows(cfg, manifest.evaluation)
    exporter = _exporter(task, rows_cfg, checkpoint)
    exporter.check_artifact(manifest)
    exporter.load()
    rows = exporter.rows.record(rows_cfg.batch_size_list)
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
    reference = exporter.reference(manifest.head, manifest.max_length)
    results = [exporter.check(artifact, manifest, name, reference) for name in manifest.variants]
    report = table(results, exporter.columns(reference))
    log.info("parity of %s on %s:\n%s", artifact, rows.describe(), report)
    failed = [r.name for r in results if not r.passed and manifest.variants[r.name].servable]
    if failed:
        raise ParityError(f"variant(s) {', '.join(failed)} of {artifact}, marked servable, missed "
                          f"their parity bounds on {rows.describe()}:\n{report}\nre-export the "
                          "artifact from this checkpoint")
    return {"reference_metrics": reference.metrics, "table": report,
            "rows": {**rows.to_json(), "as_exported": not cfg.rows_asked(), "same_as_export": same},
            "variants": {r.name: {"parity": r.parity(), "metrics": r.metrics} for r in results}}

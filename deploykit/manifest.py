"""The artifact contract in code: ``manifest.json`` as frozen, typed values with one reader.

``export`` builds a ``Manifest`` and writes it; everything that reads an artifact (the runtime,
the service, ``predict``, ``build``, ``triton``, ``k8s``, ``containerize``, the benchmarks and the
demo) gets it from ``Manifest.read`` (shape only) or ``Manifest.verify`` (shape, then the size
and sha256 of every file), and chooses the variant to serve with ``Manifest.pick``: one reader,
one variant rule, one model-name rule. No other module indexes the JSON.

The manifest is task-aware: ``task`` selects, through the task registry (``deploykit.tasks``),
the task's head class (its folder's ``head.Head``: for ``text-classification`` the ``labels`` and
the ``output`` logits tensor), which reads the task's own fields and checks the recorded graph
inputs against them, so that another task adds one head class rather than a second contract.
The layout and every field are described in docs/architecture.md.

Standard library only (plus ``deploykit.errors``, ``deploykit.files`` and the registry, which
imports nothing heavy): the torch-free serving side imports it, and so does ``deploykit.config``
for the model-name rule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterable, Mapping, Protocol, Sequence, TypeVar

from deploykit import tasks
from deploykit.errors import BadInputError, IntegrityError
from deploykit.files import sha256_file, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
# Bump only when a key changes meaning (keys may be added without a bump); list every version
# this reader understands in READABLE_VERSIONS. SCHEMA_VERSION is what export writes unless a head
# needs a newer one (version 2: a text-classification head whose logits are not softmaxed, e.g.
# multi-label; a reader of version 1 would serve it wrongly, so it must refuse it).
SCHEMA_VERSION = 1
READABLE_VERSIONS = (1, 2)
# The default variant is the first servable and batch-independent of these (export writes it as
# default_variant). ``int8`` holds whichever INT8 scheme export chose (its ``quantization.scheme``).
DEFAULT_ORDER = ("int8", "opt", "fp32")
# The variants export writes: their files and precisions (fp32, fused fp32, INT8).
VARIANT_FILES = {"fp32": "model.onnx", "opt": "model.opt.onnx", "int8": "model.int8.onnx"}
VARIANT_PRECISION = {"fp32": "fp32", "opt": "fp32", "int8": "int8"}
# A variant served by default must give every text the same logits, within this, alone and in any
# batch (parity records the worst difference): a user's answer must not change with other users'
# traffic. Static INT8 and float graphs meet it; dynamic INT8, whose activation scales come from
# the whole batch, does not (it stays servable when asked for by name).
BATCH_INDEPENDENCE_ATOL = 1e-4
# On a GPU: INT8 runs its integer matmuls on CPU kernels, so the fused fp32 graph, else the plain one.
GPU_ORDER = ("opt", "fp32")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "int8")
# Execution providers that put the model on a GPU (see device_of).
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
# A model name becomes a Triton model (folder) name, a v2 URL segment, a Kubernetes annotation
# and the default bento tag ``deploykit-<name>``, whose BentoML rule is the strictest: letters,
# digits, '_', '-' and '.', starting and ending with a letter or digit, at most 63 characters
# in all (BentoML lower-cases the tag itself).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
NAME_MAX = 63 - len("deploykit-")


def name_problem(name: Any) -> str | None:
    """The one model-name rule: what is wrong with ``name``, or None if every stage accepts it.

    Export refuses a name this rejects (``--name``), ``triton --name`` too, and the reader
    refuses a manifest that records one, so a name export writes is served, packed and deployed
    by every later stage.

    Args:
        name: The candidate model name.

    Returns:
        None for a good name, else a sentence saying what to change.
    """
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > NAME_MAX:
        return f"{name!r} is {len(name)} characters long; use at most {NAME_MAX}"
    if not _NAME.fullmatch(name):
        return (f"{name!r} is not a model name: use ASCII letters, digits, '_', '-' and '.', "
                "starting and ending with a letter or digit")
    return None


def device_of(providers: Sequence[str] | None) -> str:
    """``cuda`` when the preferred execution provider puts the model on a GPU, else ``cpu``.

    Args:
        providers: onnxruntime execution providers in order of preference (None: CPU).

    Returns:
        One of ``DEVICES``.
    """
    return "cuda" if providers and providers[0] in GPU_PROVIDERS else "cpu"


# --- small typed pieces ----------------------------------------------------------------------

class Fields:
    """Typed access to one JSON object, raising ``BadInputError`` that names the field."""

    def __init__(self, doc: Any, where: Path, prefix: str = "") -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(doc, dict):
            self.fail(prefix.rstrip(".") or "the document", "must be a JSON object")
        self.doc: dict[str, Any] = doc

    def fail(self, key: str, problem: str) -> None:
        raise BadInputError(f"{self.where}: '{self.prefix}{key}' {problem}; re-export the artifact "
                            "with 'deploykit export'")

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = True,
            default: Any = None) -> Any:
        if key not in self.doc:
            if required:
                self.fail(key, "is missing")
            return default
        value = self.doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, but not in this contract
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("a list" if k is list else "an object" if k is dict else k.__name__
                                for k in kinds)
            self.fail(key, f"must be {names}, not {json.dumps(value)[:60]}")
        return value

    def strings(self, key: str, *, unique: bool = False) -> tuple[str, ...]:
        values = self.get(key, list)
        if not values or not all(isinstance(v, str) and v for v in values):
            self.fail(key, "must be a non-empty list of non-empty strings")
        if unique and len(set(values)) != len(values):
            self.fail(key, f"has duplicates: {values}")
        return tuple(values)

    def integer(self, key: str, low: int = 0) -> int:
        """An integer field of at least ``low``."""
        value = self.get(key, int)
        if value < low:
            self.fail(key, f"is {value}; it must be at least {low}")
        return value

    def record(self, key: str) -> dict[str, Any]:
        """An optional object kept as written (metrics, provenance, quantization, ...)."""
        return dict(self.get(key, dict, required=False, default={}))


@dataclass(frozen=True)
class FileEntry:
    """Size and sha256 of one file of the artifact."""

    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}


def hash_files(folder: Path) -> dict[str, FileEntry]:
    """``{relative path: FileEntry}`` of every file under ``folder`` except the manifest itself.

    Args:
        folder: An artifact folder (complete but for its manifest).

    Returns:
        The entries in sorted path order.
    """
    table = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = FileEntry(path.stat().st_size, sha256_file(path))
    return table


def _belongs_to(rel: str, model_file: str) -> bool:
    """Whether ``rel`` is a variant's file or its ONNX external data (model.onnx.data, model.onnx_data)."""
    return rel == model_file or rel.startswith(model_file + ".") or rel.startswith(model_file + "_")


# --- task heads ---------------------------------------------------------------------------

class Head(Protocol):
    """The fields of one task's artifact (its folder's ``head.Head``): read from and written to the
    manifest, and cross-checked against the artifact's ``config.json``. The registry
    (``deploykit.tasks``) maps the manifest's ``task`` to the class."""

    TASK: ClassVar[str]

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> "Head":
        """Read the task's fields and check the graph's recorded ``inputs`` against them."""

    def to_json(self) -> dict[str, Any]:
        """The task's top-level manifest keys."""

    def check_config(self, config: Any, where: Path, max_length: int) -> None:
        """Cross-check against the artifact's parsed ``config.json`` (raises BadInputError)."""


H = TypeVar("H")


# --- the manifest ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the artifact and what export proved about it."""

    name: str
    file: str
    precision: str
    servable: bool
    bytes: int | None = None
    sha256: str | None = None
    fused_ops: Mapping[str, int] = field(default_factory=dict)
    optimization: Mapping[str, Any] | None = None
    quantization: Mapping[str, Any] | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys added later, kept on copies

    _KEYS: ClassVar[tuple[str, ...]] = ("file", "precision", "servable", "bytes", "sha256", "fused_ops",
                                        "optimization", "quantization", "parity", "metrics")

    @classmethod
    def from_json(cls, name: str, doc: Any, where: Path) -> "Variant":
        f = Fields(doc, where, f"variants.{name}.")
        file = f.get("file", str)
        rel = PurePosixPath(file)
        if not file or rel.is_absolute() or ".." in rel.parts:
            f.fail("file", f"{file!r} is not a file name inside the artifact folder")
        precision = f.get("precision", str)
        if precision not in PRECISIONS:
            f.fail("precision", f"is {precision!r}; this deploykit knows {', '.join(PRECISIONS)}")
        optimization = f.get("optimization", dict, required=False)
        quantization = f.get("quantization", dict, required=False)
        return cls(name=name, file=file, precision=precision, servable=f.get("servable", bool),
                   bytes=f.get("bytes", int, required=False), sha256=f.get("sha256", str, required=False),
                   fused_ops=f.record("fused_ops"), optimization=optimization, quantization=quantization,
                   parity=f.record("parity"), metrics=f.record("metrics"),
                   extra={k: v for k, v in doc.items() if k not in cls._KEYS})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file, "bytes": self.bytes, "sha256": self.sha256,
                               "precision": self.precision, "fused_ops": dict(self.fused_ops)}
        if self.bytes is None:
            del doc["bytes"]
        if self.sha256 is None:
            del doc["sha256"]
        for key in ("optimization", "quantization"):
            if getattr(self, key) is not None:
                doc[key] = dict(getattr(self, key))
        doc.update(parity=dict(self.parity), metrics=dict(self.metrics), servable=self.servable)
        return {**doc, **self.extra}

    @property
    def batch_dependence(self) -> float | None:
        """The worst |Δlogit| parity measured between a text alone and in mixed batches (None when
        the artifact predates the measurement)."""
        record = self.parity.get("batch_independence")
        value = record.get("max_abs_diff") if isinstance(record, Mapping) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def batch_independent(self) -> bool:
        """Whether a text's logits stay within ``BATCH_INDEPENDENCE_ATOL`` whatever its batch mates
        (taken as true when not measured: artifacts written before the measurement)."""
        dependence = self.batch_dependence
        return dependence is None or dependence <= BATCH_INDEPENDENCE_ATOL

    def why_not_servable(self) -> str:
        """The parity bounds this variant missed, as one line (for error messages)."""
        failures = self.parity.get("failures") or []
        return "; ".join(f"{f.get('check')} {f.get('value')!s:.6} vs limit {f.get('limit')}"
                         for f in failures if isinstance(f, dict)) or "failed its parity gate"


@dataclass(frozen=True)
class ParityRows:
    """The held-out rows export checked parity on, so that ``verify`` re-checks the same ones.

    ``columns`` holds the data columns the rows came from, by the option that names them (each
    task's own: ``text_column`` and ``label_column``, ``prompt_column`` ...): every key of the
    record that ends in ``_column``, so a new task records its columns without a change here.
    The columns and ``sha256`` (of the rows' texts and labels) are absent from artifacts written
    before they were recorded.
    """

    source: str
    split: str
    n: int
    batch_sizes: tuple[int, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    sha256: str | None = None

    @classmethod
    def from_json(cls, doc: Any, where: Path) -> "ParityRows":
        f = Fields(doc, where, "evaluation.")
        sizes = f.get("batch_sizes", list, required=False, default=[])
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            f.fail("batch_sizes", "must be a list of positive integers")
        columns = {key: f.get(key, str) for key in f.doc if key.endswith("_column")}
        return cls(source=f.get("data", str), split=f.get("split", str), n=f.get("n", int),
                   batch_sizes=tuple(sizes), columns=columns, sha256=f.get("rows_sha256", str, required=False))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"data": self.source, "split": self.split, "n": self.n,
                               "batch_sizes": list(self.batch_sizes), **self.columns}
        if self.sha256 is not None:
            doc["rows_sha256"] = self.sha256
        return doc

    def describe(self) -> str:
        return f"{self.n} {self.split} rows of {self.source}"


def rows_sha256(texts: Sequence[str], labels: Sequence[int]) -> str:
    """The hash ``ParityRows.sha256`` records: of the rows' texts and label ids, in order."""
    import hashlib

    return hashlib.sha256(json.dumps([list(texts), list(labels)], ensure_ascii=False).encode()).hexdigest()


def default_name(variants: Mapping[str, Variant], requested: str | None = None) -> str:
    """The fixed default-variant rule, for every task: ``requested`` if given, else int8, opt,
    fp32, the first that is servable and batch-independent (``Variant.batch_independent``).
    (A decoder's weight-only INT8 computes in int8 and is its fastest graph too:
    docs/benchmarks.md#text-generation.)

    When none is both, the first servable; when no variant is servable (only with
    --allow-parity-failure) the order applies to all, and ``pick`` then refuses the default,
    naming why it is not servable.
    """
    if requested:
        return requested
    present = [n for n in DEFAULT_ORDER if n in variants]
    for candidates in ([n for n in present if variants[n].servable and variants[n].batch_independent],
                       [n for n in present if variants[n].servable], present):
        if candidates:
            return candidates[0]
    return next(iter(variants))


@dataclass(frozen=True)
class Manifest:
    """An artifact's ``manifest.json``: what serving needs, and what export proved.

    Read it with ``Manifest.read`` or ``Manifest.verify``; build it with ``Manifest.create``;
    choose the variant to serve with ``pick``; pack part of it with ``for_copy``.
    """

    name: str
    task: str
    head: Head
    max_length: int
    inputs: tuple[str, ...]
    default_variant: str
    variants: Mapping[str, Variant]
    files: Mapping[str, FileEntry]
    reference_metrics: Mapping[str, float] = field(default_factory=dict)
    evaluation: ParityRows | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys added later, kept on copies
    where: Path = field(default=Path(MANIFEST), compare=False)

    _KEYS: ClassVar[tuple[str, ...]] = ("schema_version", "name", "task", "max_length", "inputs",
                                        "default_variant", "variants", "files", "reference_metrics",
                                        "evaluation", "provenance")

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """Read and check an artifact's manifest, without checking its files.

        Args:
            folder: The artifact folder (or a copy packed in a bento or Triton repository).

        Returns:
            The manifest.

        Raises:
            BadInputError: ``folder`` is not an artifact, or a field is missing, of the wrong
                type or out of range (the message names the field), an unknown schema version
                or task.
        """
        root = Path(folder)
        path = root / MANIFEST
        if not path.is_file():
            raise BadInputError(f"{root} is not a deploykit artifact (no {MANIFEST}); pass the folder "
                                "written by 'deploykit export'")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{path} is not valid JSON ({exc}); re-export the artifact") from None
        except RecursionError:  # nesting deeper than the interpreter's stack: not a manifest
            raise BadInputError(f"{path} nests JSON too deeply to be a manifest; re-export the "
                                "artifact") from None
        return cls.from_json(doc, path)

    @classmethod
    def from_json(cls, doc: Any, where: str | Path = MANIFEST) -> "Manifest":
        """Check a parsed manifest document and type it (see ``read``)."""
        where = Path(where)
        f = Fields(doc, where)
        version = doc.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise BadInputError(f"{where} has schema_version {version!r}; this deploykit reads "
                                f"{' and '.join(map(str, READABLE_VERSIONS))}; re-export the artifact "
                                "with this deploykit, or serve it with the deploykit that wrote it")
        name = f.get("name", str)
        problem = name_problem(name)
        if problem:
            f.fail("name", problem)
        task = f.get("task", str)
        if task not in tasks.names():
            f.fail("task", f"is {task!r}; this deploykit knows {', '.join(tasks.names())}")
        max_length = f.get("max_length", int)
        if not 0 < max_length <= 1 << 20:
            f.fail("max_length", f"is {max_length}; it must be a positive number of tokens")
        inputs = f.strings("inputs", unique=True)
        head = tasks.get(task).head().from_json(f, inputs)
        raw_variants = f.get("variants", dict)
        if not raw_variants:
            f.fail("variants", "lists no model variants")
        variants = {n: Variant.from_json(n, v, where) for n, v in raw_variants.items()}
        default = f.get("default_variant", str)
        if default not in variants:
            f.fail("default_variant", f"is {default!r}, which is not among the variants "
                                      f"({', '.join(variants)})")
        files = {}
        for rel, entry in f.get("files", dict).items():
            e = Fields(entry, where, f"files.{rel}.")
            size, digest = e.get("bytes", int), e.get("sha256", str)
            if size < 0 or not re.fullmatch(r"[0-9a-f]{64}", digest):
                e.fail("sha256" if size >= 0 else "bytes", "is not a file size and hex sha256")
            files[rel] = FileEntry(size, digest)
        evaluation = doc.get("evaluation")
        return cls(name=name, task=task, head=head, max_length=max_length, inputs=inputs,
                   default_variant=default, variants=variants, files=files,
                   reference_metrics=f.record("reference_metrics"),
                   evaluation=ParityRows.from_json(evaluation, where) if evaluation is not None else None,
                   provenance=f.record("provenance"), schema_version=version,
                   extra={k: v for k, v in doc.items() if k not in cls._KEYS + tuple(head.to_json())},
                   where=where)

    @classmethod
    def verify(cls, folder: str | Path) -> "Manifest":
        """Read the manifest, then check every file it lists (size, then sha256) and cross-check it.

        Every variant's file, ``tokenizer.json`` and ``config.json`` must be listed in ``files``,
        so nothing the runtime loads or checks against escapes verification; each variant's own
        ``bytes``/``sha256`` must match ``files``; the labels (names and order) must match the
        hashed ``config.json``'s ``id2label`` and ``max_length`` fit its position embeddings. (The
        runtime then checks the graph itself: its inputs, its output width, and one row of
        ``max_length`` tokens.)

        Args:
            folder: The artifact folder written by ``deploykit export`` (or packed in a bento).

        Returns:
            The manifest.

        Raises:
            BadInputError: As ``read``, or labels or a ``max_length`` that contradict ``config.json``.
            IntegrityError: Naming the first file that is missing, unlisted, outside the folder,
                or has the wrong size or sha256.
        """
        root = Path(folder)
        manifest = cls.read(root)
        needed = {TOKENIZER, CONFIG} | {v.file for v in manifest.variants.values()}
        unlisted = sorted(n for n in needed if n not in manifest.files)
        if unlisted:
            raise IntegrityError(f"{manifest.where} does not list {', '.join(unlisted)} under 'files', "
                                 "so it cannot be verified; re-export the artifact")
        for rel, entry in manifest.files.items():
            target = _member(root, rel, manifest.where)
            if not target.is_file():
                raise IntegrityError(f"artifact file {target} is missing; re-export the artifact or "
                                     "restore the file")
            size = target.stat().st_size
            if size != entry.bytes:
                raise IntegrityError(f"artifact file {target} has {size} bytes, the manifest says "
                                     f"{entry.bytes}: it is truncated or was changed; re-export")
            digest = sha256_file(target)
            if digest != entry.sha256:
                raise IntegrityError(f"artifact file {target} does not match its sha256 in the manifest "
                                     f"(got {digest[:12]}..., expected {entry.sha256[:12]}...): "
                                     "it was changed after export; re-export the artifact")
        for variant in manifest.variants.values():
            entry = manifest.files[variant.file]
            for key in ("bytes", "sha256"):
                if getattr(variant, key) not in (None, getattr(entry, key)):
                    raise IntegrityError(f"variant {variant.name!r} of {manifest.where} records a {key} "
                                         f"for {variant.file} that differs from 'files'; re-export")
        try:
            config = json.loads((root / CONFIG).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadInputError(f"{root / CONFIG} is not valid JSON; re-export the artifact") from None
        manifest.head.check_config(config, manifest.where, manifest.max_length)
        return manifest

    # --- building and writing ----------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, *, name: str, head: Head, max_length: int,
               inputs: Sequence[str], variants: Iterable[Variant], default: str | None,
               reference_metrics: Mapping[str, float], evaluation: ParityRows,
               provenance: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
               schema_version: int = SCHEMA_VERSION) -> "Manifest":
        """The manifest of the artifact in ``folder``, its files hashed now (export's step 5).

        Each variant's ``bytes``/``sha256`` come from the hashed files, so they cannot drift from
        ``files``; the default variant follows ``default_name``. The result passes through the
        same checks as ``read``, so export never writes what a later stage would refuse.
        ``extra`` holds top-level keys outside the typed fields (``int8_selection`` when export
        wrote no INT8 variant); ``schema_version`` is the one the head needs.

        Raises:
            BadInputError: If ``default`` is not among ``variants`` or a field breaks the contract
                (a model name the rule refuses, an unknown task, ...).
        """
        files = hash_files(folder)
        typed = {v.name: dataclasses.replace(v, bytes=files[v.file].bytes, sha256=files[v.file].sha256)
                 for v in variants}
        if default and default not in typed:
            raise BadInputError(f"--default-variant {default} is not among the exported variants "
                                f"({', '.join(typed)}); change --optimize/--quantize or --default-variant")
        manifest = cls(name=name, task=head.TASK, head=head, max_length=int(max_length), inputs=tuple(inputs),
                       default_variant=default_name(typed, default), variants=typed, files=files,
                       reference_metrics=dict(reference_metrics), evaluation=evaluation,
                       provenance=dict(provenance), extra=dict(extra or {}), where=Path(folder) / MANIFEST,
                       schema_version=schema_version)
        return cls.from_json(manifest.to_json(), manifest.where)

    def judged(self, verdicts: Mapping[str, tuple[Mapping[str, Any], Mapping[str, float], bool]],
               default: str | None = None) -> "Manifest":
        """This manifest with every variant's parity verdict set (export, after parity).

        Args:
            verdicts: ``{variant: (parity record, held-out metrics, passed)}`` for every variant.
            default: ``--default-variant``, or None for ``default_name``'s rule on the verdicts.

        Returns:
            The new manifest: a variant is servable exactly when it passed.
        """
        variants = {}
        for name, variant in self.variants.items():
            record, metrics, passed = verdicts[name]
            variants[name] = dataclasses.replace(variant, parity=dict(record), metrics=dict(metrics),
                                                 servable=bool(passed))
        judged = dataclasses.replace(self, variants=variants, default_variant=default_name(variants, default))
        return Manifest.from_json(judged.to_json(), judged.where)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (the shape docs/architecture.md describes)."""
        doc: dict[str, Any] = {"schema_version": self.schema_version, "name": self.name, "task": self.task,
                               **self.head.to_json(), "max_length": self.max_length,
                               "inputs": list(self.inputs), "default_variant": self.default_variant,
                               "variants": {n: v.to_json() for n, v in self.variants.items()},
                               "reference_metrics": dict(self.reference_metrics)}
        if self.evaluation is not None:
            doc["evaluation"] = self.evaluation.to_json()
        doc["provenance"] = dict(self.provenance)
        doc["files"] = {rel: e.to_json() for rel, e in self.files.items()}
        return {**doc, **self.extra}

    def write(self, folder: str | Path) -> Path:
        """Write ``manifest.json`` into ``folder`` (temporary name, then rename).

        Returns:
            The manifest's path.
        """
        return write_text_atomic(Path(folder) / MANIFEST, json.dumps(self.to_json(), indent=2) + "\n")

    # --- using -------------------------------------------------------------------------------

    def head_as(self, head: type[H]) -> H:
        """The task fields, typed as ``head`` (a task's ``head.Head``).

        Raises:
            BadInputError: The artifact is of another task.
        """
        if not isinstance(self.head, head):
            raise BadInputError(f"{self.where} is a {self.task} artifact; this needs a {head.TASK} artifact")
        return self.head

    def pick(self, requested: str | None = None, device: str = "cpu", *,
             option: str = "--variant / DEPLOYKIT_VARIANT") -> Variant:
        """The one variant rule: what serve, build, containerize, k8s, triton, bench and demo serve.

        ``requested`` if given (it must exist, be servable, and not be INT8 on a GPU); else on
        ``cpu`` the manifest's ``default_variant`` (``default_name``: int8, opt, fp32, the first
        servable and batch-independent one); else on ``cuda`` the first servable of ``GPU_ORDER``
        (fused fp32 ``opt``, then ``fp32``), since INT8 runs its integer matmuls on CPU kernels.

        Args:
            requested: A variant name, or None for the rule's choice.
            device: ``cpu`` or ``cuda`` (see ``device_of``).
            option: How the user names a variant in the calling command (for messages).

        Returns:
            The variant.

        Raises:
            BadInputError: Unknown or unservable variant, INT8 asked for on a GPU, or no
                servable variant for the device.
        """
        if device not in DEVICES:
            raise BadInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        if requested:
            variant = self._servable(requested, option)
            if device == "cuda" and variant.precision == "int8":
                raise BadInputError(f"variant {requested!r} is INT8, a CPU format (INT8 runs its "
                                    f"integer matmuls on CPU kernels); serve one of "
                                    f"{', '.join(GPU_ORDER)} on a GPU ({option})")
            return variant
        if device == "cpu":
            return self._servable(self.default_variant, option)
        for name in GPU_ORDER:
            variant = self.variants.get(name)
            if variant is not None and variant.servable:
                if name != GPU_ORDER[0]:
                    log.warning("%s has no servable '%s' variant; using '%s' on the GPU", self.where,
                                GPU_ORDER[0], name)
                return variant
        raise BadInputError(f"{self.where} has no servable {' or '.join(GPU_ORDER)} variant for a GPU "
                            f"(it has {self._listing()}; INT8 runs on CPU kernels); "
                            "re-export with --optimize O2, or serve on the CPU")

    def _servable(self, name: str, option: str) -> Variant:
        variant = self.variants.get(name)
        if variant is None:
            raise BadInputError(f"variant {name!r} is not in {self.where}; choose one of "
                                f"{', '.join(self.variants)} ({option})")
        if not variant.servable:
            servable = [n for n, v in self.variants.items() if v.servable]
            raise BadInputError(f"variant {name!r} is marked not servable ({variant.why_not_servable()}); "
                                f"serve one of {', '.join(servable) or 'none'} ({option}), or re-export")
        return variant

    def _listing(self) -> str:
        return ", ".join(f"{n}{'' if v.servable else ' (not servable)'}" for n, v in self.variants.items())

    def files_of(self, variant: str) -> list[str]:
        """The listed files of one variant: its graph, then any ONNX external data beside it."""
        model_file = self.variants[variant].file
        return [model_file] + [rel for rel in self.files if rel != model_file and _belongs_to(rel, model_file)]

    def for_copy(self, keep: Iterable[str]) -> "Manifest":
        """The manifest of a copy that holds only the variants ``keep`` (a bento, a Triton model).

        Files of the other variants (and their external data) leave ``files``; the default
        variant stays if kept, else becomes the first kept one by ``default_name``.

        Args:
            keep: Variant names (each must exist).

        Returns:
            A new manifest; copy exactly the files it lists.

        Raises:
            BadInputError: If ``keep`` is empty or names an unknown variant.
        """
        names = list(dict.fromkeys(keep))
        unknown = [n for n in names if n not in self.variants]
        if unknown or not names:
            raise BadInputError(f"cannot pack variant(s) {', '.join(unknown) or '(none)'}; choose from "
                                f"{', '.join(self.variants)}")
        dropped = [v.file for n, v in self.variants.items() if n not in names]
        files = {rel: e for rel, e in self.files.items() if not any(_belongs_to(rel, d) for d in dropped)}
        variants = {n: v for n, v in self.variants.items() if n in names}
        default = self.default_variant if self.default_variant in variants else default_name(variants)
        return dataclasses.replace(self, variants=variants, files=files, default_variant=default)


def _member(root: Path, name: str, where: Path) -> Path:
    """The file ``name`` inside ``root``; refuses absolute paths and ``..`` (a manifest is input)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise IntegrityError(f"{where} lists the file {name!r}, which is outside the artifact folder; "
                             "re-export the artifact with 'deploykit export'")
    return root.joinpath(*rel.parts)

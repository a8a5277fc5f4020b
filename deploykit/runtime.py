"""The torch-free inference engine shared by the service, the Triton backend and the benchmarks.

It reads an ``artifact/`` folder by its ``manifest.json`` alone: every listed file's size and
sha256 are checked before anything is loaded, the tokenizer is the ``tokenizers`` library's
``tokenizer.json``, and the model is one onnxruntime session. Large inputs are split into
batches by a token budget (as text-embeddings-inference does), rows are sorted by length so
that rows of similar length share a batch (less padding), and results come back in the
caller's order.

This module imports only numpy, onnxruntime, tokenizers, the standard library and
``deploykit.errors``; a test proves it never pulls in torch, transformers or datasets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from deploykit.errors import BadInputError, IntegrityError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SCHEMA_VERSION = 1
# Tokens that are padding in the tokenizers we export (BERT, RoBERTa/XLM-R, DeBERTa); only
# used when tokenizer.json carries no padding configuration of its own.
_PAD_TOKENS = ("[PAD]", "<pad>")
_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (what ``files`` in the manifest records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_sha256 = sha256_file  # the name deploykit.export.manifest imports


def _safe_member(root: Path, name: str) -> Path:
    """The file ``name`` inside ``root``; refuses absolute paths and ``..`` (a manifest is input)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise IntegrityError(f"{root / MANIFEST} lists the file {name!r}, which is outside the "
                             "artifact folder; re-export the artifact with 'deploykit export'")
    return root.joinpath(*rel.parts)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and shape-check an artifact's manifest, without checking file hashes.

    Args:
        path: The artifact folder.

    Returns:
        The manifest as a dict.

    Raises:
        BadInputError: If ``path`` is not an artifact folder or its manifest is malformed.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BadInputError(f"{root} is not a deploykit artifact (no {MANIFEST}); pass the folder "
                            "written by 'deploykit export'")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{manifest_path} is not valid JSON ({exc}); re-export the artifact") from None
    if not isinstance(manifest, dict):
        raise BadInputError(f"{manifest_path} must hold a JSON object; re-export the artifact")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadInputError(f"{manifest_path} has schema_version {version!r}; this deploykit reads "
                            f"schema_version {SCHEMA_VERSION}; re-export with this version")
    missing = [k for k in ("name", "labels", "max_length", "inputs", "output", "variants", "files")
               if k not in manifest]
    if missing:
        raise BadInputError(f"{manifest_path} lacks the key(s) {', '.join(missing)}; re-export the "
                            "artifact with 'deploykit export'")
    if not isinstance(manifest["variants"], dict) or not manifest["variants"]:
        raise BadInputError(f"{manifest_path} lists no model variants; re-export the artifact")
    if not isinstance(manifest["files"], dict):
        raise BadInputError(f"{manifest_path}: 'files' must map file names to bytes and sha256")
    return manifest


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """Check every file an artifact's manifest lists (size, then sha256) and return the manifest.

    The check also covers each variant's own ``bytes``/``sha256`` for the variant files that are
    present, and requires the files of every listed variant and ``tokenizer.json`` to be listed
    in ``files``, so nothing the runtime loads escapes verification.

    Args:
        path: The artifact folder written by ``deploykit export`` (or packed in a bento).

    Returns:
        The manifest as a dict.

    Raises:
        BadInputError: If ``path`` is not an artifact (no or malformed ``manifest.json``).
        IntegrityError: Naming the first file that is missing, has the wrong size or sha256.
    """
    root = Path(path)
    manifest = read_manifest(root)
    files: dict[str, Any] = manifest["files"]
    needed = {TOKENIZER} | {v.get("file", "") for v in manifest["variants"].values()}
    unlisted = sorted(n for n in needed if n not in files)
    if unlisted:
        raise IntegrityError(f"{root / MANIFEST} does not list {', '.join(unlisted)} under 'files', "
                             "so it cannot be verified; re-export the artifact")
    for name, entry in files.items():
        target = _safe_member(root, name)
        if not target.is_file():
            raise IntegrityError(f"artifact file {target} is missing; re-export the artifact or "
                                 "restore the file")
        size = target.stat().st_size
        if size != entry.get("bytes"):
            raise IntegrityError(f"artifact file {target} has {size} bytes, the manifest says "
                                 f"{entry.get('bytes')}: it is truncated or was changed; re-export")
        digest = sha256_file(target)
        if digest != entry.get("sha256"):
            raise IntegrityError(f"artifact file {target} does not match its sha256 in the manifest "
                                 f"(got {digest[:12]}..., expected {str(entry.get('sha256'))[:12]}...): "
                                 "it was changed after export; re-export the artifact")
    for vname, variant in manifest["variants"].items():
        entry = files[variant["file"]]
        for key in ("bytes", "sha256"):
            if key in variant and variant[key] != entry.get(key):
                raise IntegrityError(f"variant {vname!r} of {root / MANIFEST} records a {key} for "
                                     f"{variant['file']} that differs from 'files'; re-export")
    return manifest


def select_variant(manifest: dict[str, Any], variant: str | None = None) -> str:
    """The variant to serve: ``variant`` if given, else the manifest's ``default_variant``.

    Raises:
        BadInputError: If the variant is unknown or marked not servable.
    """
    variants = manifest["variants"]
    name = variant or manifest.get("default_variant")
    if not name:
        # Same rule export applies when it writes default_variant.
        name = next((v for v in ("int8", "opt", "fp32")
                     if variants.get(v, {}).get("servable", True) and v in variants), None)
        name = name or next(iter(variants))
    if name not in variants:
        raise BadInputError(f"variant {name!r} is not in this artifact; choose one of "
                            f"{', '.join(variants)} (--variant / DEPLOYKIT_VARIANT)")
    if not variants[name].get("servable", True):
        failures = variants[name].get("parity", {}).get("failures") or []
        why = "; ".join(f"{f.get('check')} {f.get('value')!s:.6} vs limit {f.get('limit')}"
                        for f in failures if isinstance(f, dict)) or "failed its parity gate"
        servable = [v for v, spec in variants.items() if spec.get("servable", True)]
        raise BadInputError(f"variant {name!r} is marked not servable ({why}); serve one of "
                            f"{', '.join(servable) or 'none'} with --variant / DEPLOYKIT_VARIANT, "
                            "or re-export")
    return name


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` reports the host's cores, which oversubscribes a container limited by
    Kubernetes ``resources.limits.cpu`` (a CFS quota in ``/sys/fs/cgroup/cpu.max``).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def available_providers() -> list[str]:
    """onnxruntime's execution providers usable in this process."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities of logits [n, k] (computed in float64 for stability)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class Encoded:
    """One tokenized text: ids, type ids and whether truncation cut it."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.ids)


class Runtime:
    """An artifact loaded for inference: verified files, a tokenizer and one onnxruntime session.

    Args:
        artifact: The artifact folder.
        variant: The variant to serve (default: the manifest's ``default_variant``).
        threads: onnxruntime intra-op threads (default: ``available_cpus()``, which honours
            container CPU limits).
        providers: Execution providers in order of preference (default: CPU). Asking for one
            that this onnxruntime build lacks is an error rather than a silent CPU fallback.
        max_batch_tokens: Token budget of one model call (rows x padded length).
        max_batch_size: Most rows in one model call.

    Raises:
        BadInputError: Not an artifact, unknown or unservable variant, unavailable provider,
            or a non-positive budget.
        IntegrityError: A file does not match the manifest.
    """

    def __init__(self, artifact: str | Path, variant: str | None = None, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, max_batch_tokens: int = 16384,
                 max_batch_size: int = 64) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if max_batch_size < 1 or max_batch_tokens < 1:
            raise BadInputError("max_batch_size and max_batch_tokens must be positive "
                                "(DEPLOYKIT_MAX_BATCH_SIZE / DEPLOYKIT_MAX_BATCH_TOKENS)")
        if threads is not None and threads < 1:
            raise BadInputError(f"threads must be a positive number, got {threads} (DEPLOYKIT_THREADS)")
        self.path = Path(artifact)
        self.manifest = verify_artifact(self.path)
        self.name: str = self.manifest["name"]
        self.labels: list[str] = list(self.manifest["labels"])
        self.variant: str = select_variant(self.manifest, variant)
        self.max_length: int = int(self.manifest["max_length"])
        self.input_names: list[str] = list(self.manifest["inputs"])
        self.output_name: str = self.manifest.get("output", "logits")
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        # A row longer than the token budget must still fit in a batch of one.
        self.max_batch_tokens = max(self.max_batch_tokens, self.max_length)

        self.tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER))
        padding = self.tokenizer.padding
        if padding:
            self.pad_id = int(padding["pad_id"])
        else:
            ids = [self.tokenizer.token_to_id(t) for t in _PAD_TOKENS]
            self.pad_id = next((i for i in ids if i is not None), 0)
        # Padding is done per batch here (to the batch's longest row), never to max_length.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

        exported_with = self.manifest.get("provenance", {}).get("onnxruntime")
        if exported_with and exported_with != ort.__version__:
            # Fused contrib operators and quantized kernels can change between releases.
            log.warning("artifact %s was exported and verified with onnxruntime %s but is served with %s; "
                        "run 'deploykit verify' with this version or pin onnxruntime==%s",
                        self.path, exported_with, ort.__version__, exported_with)
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BadInputError(f"execution provider(s) {', '.join(missing)} are not available in "
                                f"this onnxruntime build (available: {', '.join(ort.get_available_providers())}); "
                                "change DEPLOYKIT_PROVIDERS / --providers, or install onnxruntime-gpu for CUDA")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cpus()
        # One model call at a time per session; parallelism comes from intra-op threads.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting of idle pool threads: when the session is called from a worker thread
        # (the service's batcher), spinning threads starve the event loop and the tokenizer; on
        # 2 cores, one request through the batcher took 14.0 ms with spinning vs 7.5 ms without,
        # while a direct call stayed at 7.3-8.0 ms either way (benchmarks/serve_latency.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model_file = self.path / self.manifest["variants"][self.variant]["file"]
        self.session = ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        if set(graph_inputs) != set(self.input_names):
            raise BadInputError(f"{model_file} takes inputs {sorted(graph_inputs)} but the manifest "
                                f"lists {self.input_names}; re-export the artifact")
        self._dtypes = {n: _ORT_INT_TYPES.get(graph_inputs[n].type, np.int64) for n in self.input_names}
        log.info("loaded %s variant %s (%s) with %s", self.name, self.variant, model_file.name,
                 self.session.get_providers())

    # --- tokenization ----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize (truncating to ``max_length``) without padding.

        Args:
            texts: The texts.

        Returns:
            One ``Encoded`` per text, in order.
        """
        encodings = self.tokenizer.encode_batch(list(texts))
        return [Encoded(e.ids, e.type_ids, bool(e.overflowing)) for e in encodings]

    def feeds(self, rows: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Pad encoded rows to the longest one and build the model's input arrays."""
        width = max((r.length for r in rows), default=0)
        n = len(rows)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :row.length] = row.ids
            mask[i, :row.length] = 1
            types[i, :row.length] = row.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name].astype(self._dtypes[name], copy=False) for name in self.input_names}

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The padded numpy feeds of ``texts`` as one batch (keys: the manifest's ``inputs``)."""
        return self.feeds(self.tokenize(texts))

    # --- inference -------------------------------------------------------------------------

    # Fixed cost of one model call, in padded tokens, for ``plan``'s trade-off between padding
    # and more calls. Measured (benchmarks/padding_plan.py, MiniLM INT8, 2 cores): one call of
    # ~33 tokens costs about what 30-40 extra tokens in a larger call cost.
    CALL_COST_TOKENS = 32

    def plan(self, rows: Sequence[Encoded]) -> Iterator[list[int]]:
        """Split rows into batches by token budget and size, longest first, padding little.

        Rows are sorted by length and cut into consecutive groups that minimise the padded
        tokens computed (rows x the group's longest row) plus ``CALL_COST_TOKENS`` per call,
        within ``max_batch_size`` and ``max_batch_tokens`` (dynamic programming over the sorted
        lengths, O(rows x max_batch_size)). On CPU the model is compute-bound even at batch 1,
        so padding is what batching costs: cutting only by the budgets padded 64 random tweets
        (mean 33 tokens) to their longest and ran 2-4x slower per text than these groups
        (benchmarks/padding_plan.py, docs/benchmarks.md).

        Yields:
            Lists of row indices, one list per model call, each longest row first.
        """
        order = sorted(range(len(rows)), key=lambda i: rows[i].length, reverse=True)
        lengths = [rows[i].length for i in order]
        n = len(order)
        # best[j]: cheapest cost of the first j sorted rows; cut[j]: where its last group starts.
        best = [0.0] + [float("inf")] * n
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j - 1, max(0, j - self.max_batch_size) - 1, -1):
                width = lengths[i]  # sorted longest first: a group's first row is its widest
                if j - i > 1 and (j - i) * width > self.max_batch_tokens:
                    break  # wider groups (smaller i) only grow
                cost = best[i] + (j - i) * width + self.CALL_COST_TOKENS
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        groups = []
        j = n
        while j > 0:
            groups.append(order[cut[j]:j])
            j = cut[j]
        yield from reversed(groups)

    def run(self, rows: Sequence[Encoded]) -> np.ndarray:
        """Logits of one batch of encoded rows, as a single model call.

        Returns:
            float32 array [len(rows), num_labels].
        """
        if not rows:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        (out,) = self.session.run([self.output_name], self.feeds(rows))
        return np.asarray(out, dtype=np.float32)

    def logits_of(self, rows: Sequence[Encoded]) -> np.ndarray:
        """Logits of encoded rows of any number, batched by budget, in the rows' order."""
        result = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        for batch in self.plan(rows):
            result[batch] = self.run([rows[i] for i in batch])
        return result

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits of ``texts``: float32 [n, num_labels], in the caller's order."""
        return self.logits_of(self.tokenize(texts))

    def results(self, logits: np.ndarray, rows: Sequence[Encoded]) -> list[dict[str, Any]]:
        """Turn logits into ``{"label", "score", "scores", "truncated"}`` dicts."""
        probs = softmax(logits)
        best = probs.argmax(axis=-1)
        out = []
        for i, row in enumerate(rows):
            scores = {label: float(p) for label, p in zip(self.labels, probs[i])}
            out.append({"label": self.labels[int(best[i])], "score": float(probs[i, best[i]]),
                        "scores": scores, "truncated": row.truncated})
        return out

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify texts.

        Args:
            texts: The texts (any number; split into batches by the token budget).

        Returns:
            One ``{"label": str, "score": float, "scores": {label: float}, "truncated": bool}``
            per text, in the caller's order.
        """
        rows = self.tokenize(texts)
        return self.results(self.logits_of(rows), rows)

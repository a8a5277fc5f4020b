"""Step 5: ``manifest.json``, the single source of truth the serving side reads.

The shape is DESIGN.md's, plus ``files``: the size and sha256 of every file of the artifact
except the manifest itself, so a reader can verify all of it (``deploykit.runtime.verify_artifact``).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TASK = "text-classification"
# DESIGN.md's fixed rule: the first servable of these is the default variant.
DEFAULT_ORDER = ("int8", "opt", "fp32")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file: the same function the runtime verifies artifacts with."""
    from deploykit.runtime import _sha256

    return _sha256(Path(path))


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` but the manifest."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def default_variant(variants: dict[str, dict[str, Any]], requested: str | None = None) -> str:
    """The variant to serve by default: ``requested`` if given, else int8, opt, fp32 — the first servable.

    When no variant is servable (only with --allow-parity-failure) the rule applies to all.
    """
    if requested:
        return requested
    for candidates in ([n for n in DEFAULT_ORDER if variants.get(n, {}).get("servable")],
                       [n for n in DEFAULT_ORDER if n in variants]):
        if candidates:
            return candidates[0]
    return next(iter(variants))


def versions() -> dict[str, str]:
    """Versions of the libraries that shaped the artifact (provenance)."""
    import deploykit

    result = {"deploykit": deploykit.__version__}
    for dist, key in (("torch", "torch"), ("transformers", "transformers"), ("onnx", "onnx"),
                      ("onnxruntime", "onnxruntime"), ("optimum-onnx", "optimum_onnx"),
                      ("tokenizers", "tokenizers")):
        try:
            result[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            result[key] = "unknown"
    return result


def build(*, name: str, labels: list[str], max_length: int, inputs: list[str],
          variants: dict[str, dict[str, Any]], default: str, reference_metrics: dict[str, float],
          provenance: dict[str, Any], evaluation: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Assemble the manifest of the artifact in ``folder`` (files hashed now).

    Each variant's ``bytes``/``sha256`` are filled from the hashed files, so they cannot drift
    from ``files``.
    """
    files = file_table(folder)
    for variant in variants.values():
        entry = files[variant["file"]]
        variant["bytes"], variant["sha256"] = entry["bytes"], entry["sha256"]
    return {"schema_version": SCHEMA_VERSION, "name": name, "task": TASK, "labels": list(labels),
            "max_length": int(max_length), "inputs": list(inputs), "output": "logits",
            "default_variant": default, "variants": variants,
            "reference_metrics": reference_metrics, "evaluation": evaluation,
            "provenance": provenance, "files": files}


def write(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (to a temporary name, then renamed: never half-written)."""
    path = folder / MANIFEST
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path

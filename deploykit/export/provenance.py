"""Step 5's provenance: what shaped an artifact (library versions, opset, data, checkpoint, CPU).

The manifest itself (its shape, the file hashes, the default-variant rule) is the artifact
contract in ``deploykit.manifest``; export fills it with this record.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit.files import sha256_file


def versions() -> dict[str, str]:
    """Versions of the libraries that shaped the artifact."""
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


def provenance(checkpoint: Path, opset: int, data_sha256: str, cpu_vnni: bool) -> dict[str, Any]:
    """The manifest's ``provenance`` record.

    Args:
        checkpoint: The checkpoint folder exported (its path and weights' sha256 are recorded,
            so verify can warn when it is given other weights).
        opset: The ONNX opset of the graphs.
        data_sha256: sha256 of the parity rows' data source.
        cpu_vnni: Whether the exporting CPU has VNNI (it decides reduce_range).

    Returns:
        The record.
    """
    weights = checkpoint / "model.safetensors"
    return {**versions(), "opset": opset, "data_sha256": data_sha256, "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": sha256_file(weights) if weights.is_file() else None, "cpu_vnni": cpu_vnni}

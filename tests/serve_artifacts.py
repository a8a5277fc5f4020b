"""Build tiny artifacts for the runtime and serving tests.

Until ``deploykit.export.run`` lands on main, this writes the artifact contract by hand: a tiny
random BERT exported with optimum's ONNX exporter, a dynamic-INT8 copy that the manifest marks
not servable (as export does when a variant fails its parity gate), ``tokenizer.json`` and a
``manifest.json`` of DESIGN.md's shape with every file's size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from factories import LABELS, make_checkpoint


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_artifact(root: Path, name: str = "classifier", arch: str = "bert", max_length: int = 32) -> Path:
    """A small artifact folder at ``root / 'artifact'`` (fp32 servable, int8 not servable)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    checkpoint = make_checkpoint(root / "checkpoint", arch)
    onnx_dir = root / "onnx"
    main_export(str(checkpoint), output=str(onnx_dir), task="text-classification", opset=17,
                do_validation=False)
    art = root / "artifact"
    art.mkdir()
    shutil.copy(onnx_dir / "model.onnx", art / "model.onnx")
    shutil.copy(onnx_dir / "tokenizer.json", art / "tokenizer.json")
    shutil.copy(onnx_dir / "config.json", art / "config.json")
    quantize_dynamic(str(art / "model.onnx"), str(art / "model.int8.onnx"), weight_type=QuantType.QInt8)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha(p)} for p in sorted(art.iterdir())}
    import onnxruntime

    inputs = [i.name for i in onnxruntime.InferenceSession(str(art / "model.onnx")).get_inputs()]
    variant = lambda f, precision, servable: {  # noqa: E731
        "file": f, **files[f], "precision": precision, "fused_ops": {},
        "parity": {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "label_agreement": 1.0, "passed": servable},
        "metrics": {}, "servable": servable}
    manifest = {
        "schema_version": 1, "name": name, "task": "text-classification", "labels": list(LABELS),
        "max_length": max_length, "inputs": inputs, "output": "logits", "default_variant": "fp32",
        "variants": {"fp32": variant("model.onnx", "fp32", True),
                     "int8": variant("model.int8.onnx", "int8", False)},
        "reference_metrics": {}, "provenance": {"deploykit": "test"}, "files": files}
    (art / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(onnx_dir)
    return art

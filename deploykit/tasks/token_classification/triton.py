"""token-classification's Triton model repository (``deploykit triton``; the shared stage,
``deploykit.serve.triton_repo``, verifies, chooses the variant and writes atomically).

The repository holds one model, ``NAME`` (the manifest's ``name`` by default): a Python-backend
model on deploykit's torch-free runtime, ``TEXT`` (BYTES [n, 1]) in, ``ENTITIES`` (BYTES [n, 1], one
JSON document per text) out, the tensor names of ``deploykit serve``'s own v2 route, so one client
serves both. Why no tokenizer / ONNX / postprocess ensemble as for the classifier: a long text is
several windows whose entities are merged across window edges, which fixed-shape ensemble tensors
cannot carry without hand-built glue. Its code is ``triton_templates/python.py`` (shipped with the
package), with a ``README.md`` of the ``tritonserver`` command line and a client call.
"""

from __future__ import annotations

import string
from pathlib import Path

from deploykit.config import TritonConfig
from deploykit.manifest import Manifest
from deploykit.serve.triton_repo import Tensor, copy_artifact, providers, python_config, write_model
from deploykit.tasks.token_classification.head import TokenClassification

TEMPLATES = Path(__file__).parent / "triton_templates"
TEXT_IN = [Tensor("TEXT", "TYPE_STRING", (1,))]
ENTITIES_OUT = [Tensor("ENTITIES", "TYPE_STRING", (1,))]


def write(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path) -> None:
    """Write the token classifier's model of the repository into ``folder``.

    Args:
        cfg: The Triton settings.
        manifest: The verified manifest of the artifact ``src``.
        src: The artifact folder.
        name: The model name.
        variant: The variant to ship (chosen for ``cfg.kind``).
        folder: The repository folder (a temporary one the stage renames into place).
    """
    head = manifest.head_as(TokenClassification)
    version = write_model(folder / name, python_config(name, cfg, TEXT_IN, ENTITIES_OUT, {
        "variant": variant, "threads": cfg.threads, "providers": providers(cfg.kind)}), TEMPLATES / "python.py")
    copy_artifact(src, version / "artifact", manifest, variant)
    template = string.Template((TEMPLATES / "README.md").read_text(encoding="utf-8"))
    (folder / "README.md").write_text(template.substitute(
        name=name, variant=variant, types=", ".join(head.entity_types), aggregation=head.aggregation,
        max_length=manifest.max_length, stride=head.stride, providers=providers(cfg.kind),
        onnxruntime="onnxruntime-gpu" if cfg.kind == "gpu" else "onnxruntime"), encoding="utf-8")

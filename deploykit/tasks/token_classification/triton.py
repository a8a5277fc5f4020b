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

from pathlib import Path

from deploykit.config import TritonConfig
from deploykit.manifest import Manifest
from deploykit.serve.triton_repo import Tensor, write_runtime_model
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
    write_runtime_model(cfg, manifest, src, name, variant, folder, (TEXT_IN, ENTITIES_OUT), TEMPLATES / "python.py",
                        TEMPLATES / "README.md", types=", ".join(head.entity_types), aggregation=head.aggregation,
                        stride=head.stride)

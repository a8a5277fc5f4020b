"""question-answering's Triton model repository (``deploykit triton``; the shared stage,
``deploykit.serve.triton_repo``, verifies, chooses the variant and writes atomically).

The repository holds one model, ``NAME`` (the manifest's ``name`` by default): a Python-backend model on
deploykit's torch-free runtime, ``QUESTION`` and ``CONTEXT`` (BYTES [n, 1]) in, ``ANSWER``, ``SCORE``,
``START``, ``END`` out, the tensor names of ``deploykit serve``'s own v2 route, so one client serves both.
Why no tokenizer / ONNX / postprocess ensemble: a long context is several windows whose answers are
searched together (``triton_templates/README.md``).
"""

from __future__ import annotations

import string
from pathlib import Path

from deploykit.config import TritonConfig
from deploykit.manifest import Manifest
from deploykit.serve.triton_repo import Tensor, copy_artifact, providers, python_config, write_model
from deploykit.tasks.question_answering.head import QuestionAnswering

TEMPLATES = Path(__file__).parent / "triton_templates"
INPUTS = [Tensor("QUESTION", "TYPE_STRING", (1,)), Tensor("CONTEXT", "TYPE_STRING", (1,))]
OUTPUTS = [Tensor("ANSWER", "TYPE_STRING", (1,)), Tensor("SCORE", "TYPE_FP32", (1,)),
           Tensor("START", "TYPE_INT64", (1,)), Tensor("END", "TYPE_INT64", (1,))]


def write(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path) -> None:
    """Write the reader's model of the repository into ``folder``.

    Args:
        cfg: The Triton settings.
        manifest: The verified manifest of the artifact ``src``.
        src: The artifact folder.
        name: The model name.
        variant: The variant to ship (chosen for ``cfg.kind``).
        folder: The repository folder (a temporary one the stage renames into place).
    """
    head = manifest.head_as(QuestionAnswering)
    version = write_model(folder / name, python_config(name, cfg, INPUTS, OUTPUTS, {
        "variant": variant, "threads": cfg.threads, "providers": providers(cfg.kind)}), TEMPLATES / "python.py")
    copy_artifact(src, version / "artifact", manifest, variant)
    template = string.Template((TEMPLATES / "README.md").read_text(encoding="utf-8"))
    (folder / "README.md").write_text(template.substitute(
        name=name, variant=variant, max_length=manifest.max_length, stride=head.doc_stride,
        max_answer_len=head.max_answer_len, null_threshold=head.null_threshold, providers=providers(cfg.kind),
        onnxruntime="onnxruntime-gpu" if cfg.kind == "gpu" else "onnxruntime"), encoding="utf-8")

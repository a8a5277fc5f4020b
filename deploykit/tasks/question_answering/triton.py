"""question-answering's Triton model repository (``deploykit triton``; the shared stage,
``deploykit.serve.triton_repo``, verifies, chooses the variant and writes atomically).

The repository holds one model, ``NAME`` (the manifest's ``name`` by default): a Python-backend model on
deploykit's torch-free runtime, ``QUESTION`` and ``CONTEXT`` (BYTES [n, 1]) in, ``ANSWER``, ``SCORE``,
``START``, ``END`` out, the tensor names of ``deploykit serve``'s own v2 route, so one client serves both.
Why no tokenizer / ONNX / postprocess ensemble: a long context is several windows whose answers are
searched together (``triton_templates/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from deploykit.config import TritonConfig
from deploykit.manifest import Manifest
from deploykit.serve.triton_repo import Tensor, write_runtime_model
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
    write_runtime_model(cfg, manifest, src, name, variant, folder, (INPUTS, OUTPUTS), TEMPLATES / "python.py",
                        TEMPLATES / "README.md", stride=head.doc_stride, max_answer_len=head.max_answer_len,
                        null_threshold=head.null_threshold)

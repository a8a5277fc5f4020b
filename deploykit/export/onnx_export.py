"""Step 1: a checkpoint to a plain fp32 ONNX graph through optimum-onnx's exporter.

The model is loaded with eager attention: the SDPA path exports as one opaque
``scaled_dot_product_attention`` pattern that onnxruntime's transformer optimizer cannot
fuse, while the eager matmul-softmax-matmul pattern is what its ``Attention`` fusion matches.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deploykit.errors import BadInputError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


def model_type(checkpoint: Path) -> str:
    """The ``model_type`` of a checkpoint's config.json."""
    return str(json.loads((checkpoint / "config.json").read_text()).get("model_type", ""))


def check_supported(checkpoint: Path, task: str) -> str:
    """Refuse an architecture optimum-onnx cannot export for ``task``.

    Args:
        checkpoint: A validated checkpoint folder.
        task: optimum's task name (``text-classification``, ``text-generation-with-past``, ...).

    Returns:
        The checkpoint's model type.

    Raises:
        BadInputError: If optimum-onnx has no ONNX config of ``task`` for the type.
    """
    import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the ONNX configs
    from optimum.exporters.tasks import TasksManager

    kind = model_type(checkpoint)
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(kind, "onnx", library_name="transformers")
    except KeyError:
        tasks = {}
    if task not in tasks:
        known = TasksManager._LIBRARY_TO_SUPPORTED_MODEL_TYPES["transformers"]
        supported = sorted(m for m, t in known.items() if task in t.get("onnx", {}))
        raise BadInputError(f"{checkpoint}: architecture '{kind or 'unknown'}' cannot be exported to "
                            f"ONNX for {task} by optimum-onnx; fine-tune one of: "
                            f"{', '.join(supported[:40])}{' ...' if len(supported) > 40 else ''}")
    return kind


def load_eager(checkpoint: Path) -> tuple[Any, Any]:
    """Load a checkpoint's model (eager attention, eval mode) and its fast tokenizer.

    Raises:
        BadInputError: If the checkpoint has no fast tokenizer (``tokenizer.json`` is needed
            by the torch-free runtime).
    """
    from deploykit import checkpoint as ckpt

    model, tokenizer = ckpt.load_model(checkpoint, attn_implementation="eager")
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(f"{checkpoint}: its tokenizer has no fast (Rust) version, which the "
                            f"serving runtime needs as tokenizer.json; save a fast tokenizer into "
                            f"the checkpoint (AutoTokenizer.from_pretrained(..., use_fast=True))")
    return model, tokenizer


def export_onnx(model: Any, out_file: Path, opset: int, task: str) -> Path:
    """Export a model to ONNX with dynamic batch and sequence axes.

    Args:
        model: A transformers model in eval mode, loaded with eager attention.
        out_file: Where to write the graph (``model.onnx``).
        opset: ONNX opset.
        task: optimum's task name: ``text-classification``, or ``text-generation-with-past``
            for a decoder with its key/value cache as inputs and outputs.

    Returns:
        ``out_file``.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    # optimum writes config and tokenizer files beside the graph; export into a scratch
    # folder and keep only the graph (plus external weight data of models over 2 GB).
    scratch = Path(tempfile.mkdtemp(prefix="deploykit-onnx-"))
    try:
        # Validation is ours (each task's parity, on real held-out rows at several shapes), so
        # optimum's own dummy-input check would only repeat it.
        onnx_export_from_model(model, scratch, opset=opset, task=task, do_validation=False)
        for item in scratch.iterdir():
            if item.name == MODEL_FILE or item.name.startswith(MODEL_FILE + "_data"):
                shutil.move(str(item), out_file.parent / item.name.replace(MODEL_FILE, out_file.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("exported %s (opset %d)", out_file, opset)
    return out_file


def write_tokenizer(tokenizer: Any, path: Path, max_length: int | None, truncation: str = "longest_first") -> Path:
    """Save the fast tokenizer as one ``tokenizer.json`` usable by the ``tokenizers`` library alone.

    Args:
        tokenizer: The checkpoint's fast tokenizer (never changed: a copy is saved).
        path: Where to write.
        max_length: Truncation to this many tokens and padding (to each batch's longest row),
            stored in the file so that a reader gets the ids the checkpoint's tokenizer gave in
            training; None for neither (a decoder's runtime pads on the left itself and refuses
            a prompt longer than the context rather than cutting it).
        truncation: How a pair of texts is cut (``longest_first``, ``only_second``), kept in the file.
    """
    backend = tokenizer.backend_tokenizer
    backend = type(backend).from_str(backend.to_str())  # a copy: never change the caller's
    if max_length is None:
        backend.no_truncation()
        backend.no_padding()
    else:
        backend.enable_truncation(max_length, strategy=truncation)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        backend.enable_padding(pad_id=pad_id, pad_token=tokenizer.pad_token or "[PAD]")
    backend.save(str(path))
    return path

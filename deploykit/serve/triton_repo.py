"""``deploykit triton``: a Triton Inference Server model repository from an exported artifact.

Written once: the artifact is verified, the variant chosen (``Manifest.pick`` on the CPU or the
GPU), and the repository built in a temporary folder beside ``--out`` and renamed into place;
the artifact's task writes the models (its folder's ``triton.py``: for text-classification an
ONNX model, tokenizer and postprocess Python-backend models, their ensemble and a one-model
Python backend). A task without one is refused by name. The helpers here render the parts every
repository has: ``config.pbtxt`` files (written as text from small templates rather than through
the protobuf classes, which live in ``tritonclient[grpc]``, which the serving install does not
need; the tests parse every file with ``model_config_pb2.ModelConfig`` to keep this honest) and
the artifact copied into a Python-backend model. This module is torch-free: it reads graphs'
inputs and outputs with onnxruntime.
"""

from __future__ import annotations

import json
import logging
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit import tasks
from deploykit.config import TritonConfig
from deploykit.errors import BadInputError
from deploykit.files import atomic_folder
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

# ONNX element types (as onnxruntime spells them) -> Triton data types.
ONNX_TO_TRITON = {
    "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL",
}
# The ONNX Runtime backend's own numbering of `optimization { graph { level } }`: unset (0) is
# every optimization, -1 basic, 1 basic + extended, 2 none. It is NOT onnxruntime's enum.
GRAPH_LEVELS = {"all": None, "extended": 1, "basic": -1, "disabled": 2}


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model: name, Triton data type and dims (without the batch)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ] }}'


def graph_signature(model_file: Path, width: int) -> tuple[list[Tensor], list[Tensor]]:
    """The ONNX graph's inputs and outputs as Triton tensors, for a [batch, sequence] -> [batch,
    width] graph (a classifier's: ``width`` labels).

    Every input gets ``dims: [-1]`` (the sequence axis; the batch axis is implied by
    ``max_batch_size``) and every output ``[width]``.

    Args:
        model_file: The ONNX file.
        width: The outputs' last axis (a classifier's number of labels).

    Returns:
        (inputs, outputs) in graph order.

    Raises:
        BadInputError: If the graph is not a [batch, sequence] -> [batch, labels] classifier
            or uses a type Triton cannot carry.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Only the signature is needed: skip the optimizer, which is the slow part of loading.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def convert(arg: Any, dims: tuple[int, ...]) -> Tensor:
        if arg.type not in ONNX_TO_TRITON:
            raise BadInputError(f"{model_file}: tensor {arg.name!r} has type {arg.type}, which "
                                "this writer does not map to a Triton type; re-export the artifact")
        if len(arg.shape) != 2:
            raise BadInputError(f"{model_file}: tensor {arg.name!r} has shape {arg.shape}; a "
                                "classifier's inputs and outputs are 2-D [batch, ...]; re-export")
        return Tensor(arg.name, ONNX_TO_TRITON[arg.type], dims)

    inputs = [convert(i, (-1,)) for i in session.get_inputs()]
    outputs = [convert(o, (width,)) for o in session.get_outputs()]
    return inputs, outputs


def choose_variant(manifest: Manifest, kind: str, variant: str | None = None) -> str:
    """The variant a repository for ``kind`` ships: ``Manifest.pick`` on the CPU or the GPU.

    Raises:
        BadInputError: If ``variant`` is unknown or not servable, is INT8 on gpu, or no
            servable variant fits ``kind``.
    """
    return manifest.pick(variant, "cuda" if kind == "gpu" else "cpu", option="--variant, or --kind").name


def _preferred_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = {max_batch_size, max(1, max_batch_size // 2), max(1, max_batch_size // 4)}
    return sorted(sizes)


def _parameters(values: dict[str, Any]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}'
                     for k, v in values.items())


def io_section(inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """The ``input``/``output`` sections of a config.pbtxt."""
    return ("input [\n" + ",\n".join(t.pbtxt() for t in inputs) + "\n]\n"
            "output [\n" + ",\n".join(t.pbtxt() for t in outputs) + "\n]\n")


def _batching(cfg: TritonConfig) -> str:
    sizes = ", ".join(str(s) for s in _preferred_batch_sizes(cfg.max_batch_size))
    return (f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}\n}}\n")


def _instances(count: int, kind: str) -> str:
    return f"instance_group [ {{ count: {count} kind: KIND_{kind.upper()} }} ]\n"


def onnx_config(name: str, cfg: TritonConfig, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """config.pbtxt of ``NAME_onnx`` (platform onnxruntime_onnx)."""
    text = (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {cfg.max_batch_size}\n'
            + io_section(inputs, outputs) + _batching(cfg) + _instances(cfg.instances, cfg.kind))
    level = GRAPH_LEVELS[cfg.graph_level]
    if level is not None:
        text += f"optimization {{ graph {{ level: {level} }} }}\n"
    # inter-op 1: the graph runs sequentially; parallelism comes from intra-op threads and
    # from instances. intra-op 0 lets ONNX Runtime use one thread per core.
    return text + _parameters({"intra_op_thread_count": cfg.threads,
                               "inter_op_thread_count": 1}) + "\n"


def python_config(name: str, cfg: TritonConfig, inputs: list[Tensor], outputs: list[Tensor],
                  parameters: dict[str, Any], *, batching: bool = True) -> str:
    """config.pbtxt of a Python-backend model (always on CPU instances)."""
    text = (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {cfg.max_batch_size}\n'
            + io_section(inputs, outputs) + (_batching(cfg) if batching else "")
            + _instances(cfg.instances, "cpu"))
    return text + _parameters(parameters) + "\n"


def write_model(folder: Path, config: str, code: Path | None = None) -> Path:
    """A model folder: its ``config.pbtxt`` and version ``1/`` (with ``code`` as ``model.py``)."""
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    if code:
        shutil.copyfile(code, version / "model.py")
    return version


def copy_artifact(src: Path, dst: Path, manifest: Manifest, variant: str) -> None:
    """Copy the artifact with only ``variant``; the copy's manifest lists exactly its files."""
    copy = manifest.for_copy([variant])
    for rel in copy.files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    copy.write(dst)


def providers(kind: str) -> str:
    """The execution providers a Python-backend model asks for on ``kind``."""
    return "CUDAExecutionProvider,CPUExecutionProvider" if kind == "gpu" else "CPUExecutionProvider"


def write_runtime_model(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path,
                        tensors: tuple[list[Tensor], list[Tensor]], code: Path, readme: Path, **fields: Any) -> None:
    """One Python-backend model ``name`` that runs deploykit's torch-free runtime on the artifact (what a
    task ships when fixed-shape ensemble tensors cannot carry its answers), and the repository's README.

    Args:
        cfg, manifest, src, name, variant, folder: As a task's ``triton.write``.
        tensors: The model's inputs and outputs (the tensor names of ``deploykit serve``'s v2 route).
        code: The model's ``model.py`` (a task's ``triton_templates/python.py``).
        readme: The README, a ``string.Template`` given ``name``, ``variant``, ``max_length``,
            ``providers``, ``onnxruntime`` and ``fields``.
        **fields: The task's own fields of its README.
    """
    inputs, outputs = tensors
    version = write_model(folder / name, python_config(name, cfg, inputs, outputs, {
        "variant": variant, "threads": cfg.threads, "providers": providers(cfg.kind)}), code)
    copy_artifact(src, version / "artifact", manifest, variant)
    template = string.Template(readme.read_text(encoding="utf-8"))
    (folder / "README.md").write_text(template.substitute(
        name=name, variant=variant, max_length=manifest.max_length, providers=providers(cfg.kind),
        onnxruntime="onnxruntime-gpu" if cfg.kind == "gpu" else "onnxruntime", **fields), encoding="utf-8")

def write_repository(cfg: TritonConfig) -> Path:
    """Write the model repository ``cfg.out`` from the artifact ``cfg.artifact``.

    The artifact is verified first (every file's size and sha256). The repository is built in
    a temporary folder beside ``cfg.out`` and renamed into place, so a failure leaves nothing
    half-written.

    Args:
        cfg: The Triton settings.

    Returns:
        The repository folder.

    Raises:
        BadInputError: Not an artifact, a task without a Triton repository, no variant for
            ``cfg.kind``, a graph the writer cannot describe, or ``cfg.out`` not empty without
            ``overwrite``.
        IntegrityError: An artifact file does not match its manifest.
    """
    src = Path(cfg.artifact)
    out = Path(cfg.out)
    if out.resolve() == src.resolve():
        raise BadInputError(f"--out {out} is the artifact folder itself; write the repository "
                            "somewhere else")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise BadInputError(f"--out {out} exists and is not empty; choose another folder or pass "
                            "--overwrite to replace it")
    manifest = Manifest.verify(src)
    task = tasks.get(manifest.task)
    if not task.has("triton"):
        writers = [t.name for t in tasks.all_tasks() if t.has("triton")]
        raise BadInputError(f"{src} is a {task.name} artifact; 'deploykit triton' writes repositories of "
                            f"{' and '.join(writers)} artifacts; serve this one with 'deploykit serve' "
                            "(or its container)")
    name = cfg.name or manifest.name  # both pass the one model-name rule (config, manifest reader)
    variant = choose_variant(manifest, cfg.kind, cfg.variant)
    with atomic_folder(out) as tmp:
        task.part("triton").write(cfg, manifest, src, name, variant, tmp)
    log.info("wrote Triton model repository %s (models %s, variant %s)", out,
             ", ".join(sorted(p.name for p in out.iterdir() if p.is_dir())), variant)
    return out


def run(cfg: TritonConfig) -> Path:
    """Entry point of ``deploykit triton``: see ``write_repository``."""
    return write_repository(cfg)

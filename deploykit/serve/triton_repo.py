"""Write a Triton Inference Server model repository from an exported artifact.

The repository holds, for a model named NAME (the manifest's ``name`` by default):

- ``NAME_onnx``: the chosen ONNX variant on the ``onnxruntime_onnx`` platform, with dynamic
  batching, an instance group for the chosen device and ONNX Runtime's thread settings;
- ``NAME_tokenizer`` and ``NAME_postprocess``: Python-backend models (``tokenizers`` and numpy
  only) that turn TEXT into the graph's inputs and logits into LABEL and SCORES;
- ``NAME``: the ensemble wiring the three (TEXT in; LABEL, SCORES out), the same tensor names
  as deploykit's own v2 endpoint, so one client serves both;
- ``NAME_python``: the whole classifier as one Python-backend model on deploykit's runtime,
  for Triton builds that lack the ONNX Runtime backend;
- ``README.md`` with the ``tritonserver`` command lines and a client call.

The ``config.pbtxt`` files are written as text from small templates rather than through the
protobuf classes, because those live in ``tritonclient[grpc]``, which the serving install does
not need; the tests parse every file with ``model_config_pb2.ModelConfig`` to keep this honest.
This module is torch-free: it reads the graph's inputs and outputs with onnxruntime.
"""

from __future__ import annotations

import json
import logging
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.config import TritonConfig
from deploykit.errors import BadInputError
from deploykit.files import atomic_folder
from deploykit.manifest import TOKENIZER, Manifest
from deploykit.tasks.classification.head import Classification

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "triton_templates"
# ONNX element types (as onnxruntime spells them) -> Triton data types.
ONNX_TO_TRITON = {
    "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL",
}
# The ONNX Runtime backend's own numbering of `optimization { graph { level } }`: unset (0) is
# every optimization, -1 basic, 1 basic + extended, 2 none. It is NOT onnxruntime's enum.
GRAPH_LEVELS = {"all": None, "extended": 1, "basic": -1, "disabled": 2}
# Where each Python-backend model's code comes from.
PY_MODELS = {"tokenizer": "tokenizer.py", "postprocess": "postprocess.py", "python": "python.py"}


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model: name, Triton data type and dims (without the batch)."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ] }}'


def graph_signature(model_file: Path, num_labels: int) -> tuple[list[Tensor], list[Tensor]]:
    """The ONNX graph's inputs and outputs as Triton tensors.

    Every input gets ``dims: [-1]`` (the sequence axis; the batch axis is implied by
    ``max_batch_size``) and every output ``[num_labels]``.

    Args:
        model_file: The ONNX file.
        num_labels: Number of classes (the logits' last axis).

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
    outputs = [convert(o, (num_labels,)) for o in session.get_outputs()]
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


def _io(inputs: list[Tensor], outputs: list[Tensor]) -> str:
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
            + _io(inputs, outputs) + _batching(cfg) + _instances(cfg.instances, cfg.kind))
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
            + _io(inputs, outputs) + (_batching(cfg) if batching else "")
            + _instances(cfg.instances, "cpu"))
    return text + _parameters(parameters) + "\n"


def ensemble_config(name: str, cfg: TritonConfig, graph_inputs: list[Tensor], num_labels: int,
                    output: str) -> str:
    """config.pbtxt of the ensemble ``NAME``: tokenizer -> onnx -> postprocess."""
    def maps(kind: str, names: list[str]) -> str:
        return "".join(f'      {kind} {{ key: "{n}" value: "{n}" }}\n' for n in names)

    def step(model: str, ins: list[str], outs: list[str]) -> str:
        return (f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
                + maps("input_map", ins) + maps("output_map", outs) + "    }")

    names = [t.name for t in graph_inputs]
    steps = [step(f"{name}_tokenizer", ["TEXT"], names),
             step(f"{name}_onnx", names, [output]),
             step(f"{name}_postprocess", [output], ["LABEL", "SCORES"])]
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {cfg.max_batch_size}\n'
            + _io(*_text_signature(num_labels))
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def _text_signature(num_labels: int) -> tuple[list[Tensor], list[Tensor]]:
    return ([Tensor("TEXT", "TYPE_STRING", (1,))],
            [Tensor("LABEL", "TYPE_STRING", (1,)), Tensor("SCORES", "TYPE_FP32", (num_labels,))])


def _write_model(folder: Path, config: str, code: str | None = None) -> Path:
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    if code:
        shutil.copyfile(TEMPLATES / PY_MODELS[code], version / "model.py")
    return version


def _copy_artifact(src: Path, dst: Path, manifest: Manifest, variant: str) -> None:
    """Copy the artifact with only ``variant``; the copy's manifest lists exactly its files."""
    copy = manifest.for_copy([variant])
    for rel in copy.files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    copy.write(dst)


def _providers(kind: str) -> str:
    return "CUDAExecutionProvider,CPUExecutionProvider" if kind == "gpu" else "CPUExecutionProvider"


def _readme(name: str, cfg: TritonConfig, variant: str, labels: list[str]) -> str:
    template = string.Template((TEMPLATES / "README.md").read_text(encoding="utf-8"))
    return template.substitute(name=name, variant=variant, kind=cfg.kind, labels=", ".join(labels),
                               max_batch_size=cfg.max_batch_size, num_labels=len(labels),
                               providers=_providers(cfg.kind),
                               onnxruntime="onnxruntime-gpu" if cfg.kind == "gpu" else "onnxruntime")


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
        BadInputError: Not an artifact, no variant for ``cfg.kind``, a graph the writer cannot
            describe, or ``cfg.out`` not empty without ``overwrite``.
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
    name = cfg.name or manifest.name  # both pass the one model-name rule (config, manifest reader)
    labels = list(manifest.head_as(Classification).labels)
    variant = choose_variant(manifest, cfg.kind, cfg.variant)
    model_file, *external = manifest.files_of(variant)
    model_file = src / model_file
    inputs, outputs = graph_signature(model_file, len(labels))
    graph_names = [t.name for t in inputs]
    if sorted(graph_names) != sorted(manifest.inputs):
        raise BadInputError(f"{model_file} takes inputs {graph_names} but {manifest.where} lists "
                            f"{list(manifest.inputs)}; re-export the artifact")
    output = manifest.head_as(Classification).output
    if [t.name for t in outputs] != [output]:
        raise BadInputError(f"{model_file} has outputs {[t.name for t in outputs]}, expected only "
                            f"{output!r}; re-export the artifact")
    text_in, text_out = _text_signature(len(labels))

    with atomic_folder(out) as tmp:
        version = _write_model(tmp / f"{name}_onnx", onnx_config(f"{name}_onnx", cfg, inputs, outputs))
        shutil.copyfile(model_file, version / "model.onnx")
        # Weights stored beside a large graph (ONNX external data) keep their own file names,
        # which the graph refers to.
        for rel in external:
            shutil.copyfile(src / rel, version / Path(rel).name)

        # The tokenizer's outputs are the graph's inputs, each [n, max_length].
        version = _write_model(
            tmp / f"{name}_tokenizer",
            python_config(f"{name}_tokenizer", cfg, text_in, inputs,
                          {"max_length": manifest.max_length, "inputs": ",".join(graph_names)},
                          batching=False),
            "tokenizer")
        shutil.copyfile(src / TOKENIZER, version / TOKENIZER)

        _write_model(tmp / f"{name}_postprocess",
                     python_config(f"{name}_postprocess", cfg, outputs, text_out,
                                   {"labels": json.dumps(labels)}, batching=False),
                     "postprocess")
        _write_model(tmp / name, ensemble_config(name, cfg, inputs, len(labels), output))

        version = _write_model(
            tmp / f"{name}_python",
            python_config(f"{name}_python", cfg, text_in, text_out,
                          {"variant": variant, "threads": cfg.threads, "providers": _providers(cfg.kind)}),
            "python")
        _copy_artifact(src, version / "artifact", manifest, variant)

        (tmp / "README.md").write_text(_readme(name, cfg, variant, labels), encoding="utf-8")
    log.info("wrote Triton model repository %s (models %s, %s_onnx/python ship variant %s)",
             out, ", ".join(sorted(p.name for p in out.iterdir() if p.is_dir())), name, variant)
    return out


def run(cfg: TritonConfig) -> Path:
    """Entry point of ``deploykit triton``: see ``write_repository``."""
    return write_repository(cfg)

"""text-classification's Triton model repository (``deploykit triton``; the shared stage,
``deploykit.serve.triton_repo``, verifies, chooses the variant and writes atomically).

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

A multi-label, text-pair, relevance or similarity head is served by ``NAME`` alone, the Python
model on deploykit's runtime (the ensemble's postprocess is a single-label softmax): TEXT (and
TEXT_PAIR for pairs) in; LABEL, LABELS (multi-label, a JSON list per row) or none, and SCORES
out, the tensors of deploykit's own v2 route.

The Python-backend models' code is ``triton_templates/`` (shipped with the package).
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

from deploykit.config import TritonConfig
from deploykit.errors import BadInputError
from deploykit.manifest import TOKENIZER, Manifest
from deploykit.serve.triton_repo import (Tensor, copy_artifact, graph_signature, io_section, onnx_config, providers,
                                         python_config, write_model, write_runtime_model)
from deploykit.tasks.classification.head import Classification

TEMPLATES = Path(__file__).parent / "triton_templates"


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
            + io_section(*_text_signature(num_labels))
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def _text_signature(num_labels: int) -> tuple[list[Tensor], list[Tensor]]:
    return ([Tensor("TEXT", "TYPE_STRING", (1,))],
            [Tensor("LABEL", "TYPE_STRING", (1,)), Tensor("SCORES", "TYPE_FP32", (num_labels,))])


def _readme(name: str, cfg: TritonConfig, variant: str, labels: list[str]) -> str:
    template = string.Template((TEMPLATES / "README.md").read_text(encoding="utf-8"))
    return template.substitute(name=name, variant=variant, kind=cfg.kind, labels=", ".join(labels),
                               max_batch_size=cfg.max_batch_size, num_labels=len(labels),
                               providers=providers(cfg.kind),
                               onnxruntime="onnxruntime-gpu" if cfg.kind == "gpu" else "onnxruntime")


def write(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path) -> None:
    """Write the classifier's models of the repository into ``folder``.

    Args:
        cfg: The Triton settings.
        manifest: The verified manifest of the artifact ``src``.
        src: The artifact folder.
        name: The model name.
        variant: The variant to ship (chosen for ``cfg.kind``).
        folder: The repository folder (a temporary one the stage renames into place).

    Raises:
        BadInputError: A graph whose inputs or outputs contradict the manifest, or that the writer
            cannot describe.
    """
    head = manifest.head_as(Classification)
    labels = list(head.labels)
    model_file, *external = manifest.files_of(variant)
    model_file = src / model_file
    inputs, outputs = graph_signature(model_file, len(labels))
    graph_names = [t.name for t in inputs]
    if sorted(graph_names) != sorted(manifest.inputs):
        raise BadInputError(f"{model_file} takes inputs {graph_names} but {manifest.where} lists "
                            f"{list(manifest.inputs)}; re-export the artifact")
    if [t.name for t in outputs] != [head.output]:
        raise BadInputError(f"{model_file} has outputs {[t.name for t in outputs]}, expected only "
                            f"{head.output!r}; re-export the artifact")
    if head.multi_label or head.text_pair or head.score_head:
        _write_runtime_model(cfg, manifest, src, name, variant, folder, head)
    else:
        _write_ensemble(cfg, manifest, src, name, variant, folder, (inputs, outputs), model_file, external)


def _write_ensemble(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path,
                    graph: tuple[list[Tensor], list[Tensor]], model_file: Path, external: list[str]) -> None:
    """A single-label classifier: the ONNX model, the tokenizer and postprocess models, their
    ensemble ``NAME`` and the one-model Python backend ``NAME_python``."""
    head = manifest.head_as(Classification)
    labels = list(head.labels)
    inputs, outputs = graph
    graph_names = [t.name for t in inputs]
    text_in, text_out = _text_signature(len(labels))
    version = write_model(folder / f"{name}_onnx", onnx_config(f"{name}_onnx", cfg, inputs, outputs))
    shutil.copyfile(model_file, version / "model.onnx")
    # Weights stored beside a large graph (ONNX external data) keep their own file names,
    # which the graph refers to.
    for rel in external:
        shutil.copyfile(src / rel, version / Path(rel).name)

    # The tokenizer's outputs are the graph's inputs, each [n, max_length].
    version = write_model(
        folder / f"{name}_tokenizer",
        python_config(f"{name}_tokenizer", cfg, text_in, inputs,
                      {"max_length": manifest.max_length, "inputs": ",".join(graph_names)}, batching=False),
        TEMPLATES / "tokenizer.py")
    shutil.copyfile(src / TOKENIZER, version / TOKENIZER)

    write_model(folder / f"{name}_postprocess",
                python_config(f"{name}_postprocess", cfg, outputs, text_out, {"labels": json.dumps(labels)},
                              batching=False),
                TEMPLATES / "postprocess.py")
    write_model(folder / name, ensemble_config(name, cfg, inputs, len(labels), head.output))

    version = write_model(
        folder / f"{name}_python",
        python_config(f"{name}_python", cfg, text_in, text_out,
                      {"variant": variant, "threads": cfg.threads, "providers": providers(cfg.kind)}),
        TEMPLATES / "python.py")
    copy_artifact(src, version / "artifact", manifest, variant)

    (folder / "README.md").write_text(_readme(name, cfg, variant, labels), encoding="utf-8")


def _write_runtime_model(cfg: TritonConfig, manifest: Manifest, src: Path, name: str, variant: str, folder: Path,
                         head: Classification) -> None:
    """``NAME`` as the Python model on deploykit's runtime, with the tensors of the head's v2 route (a
    multi-label, text-pair, relevance or similarity head, whose decision the ensemble's softmax
    postprocess would get wrong)."""
    names = ("TEXT", "TEXT_PAIR") if head.text_pair else ("TEXT",)
    inputs = [Tensor(n, "TYPE_STRING", (1,)) for n in names]
    outputs = [Tensor("SCORES", "TYPE_FP32", (len(head.labels),))]
    if not head.score_head:
        outputs.insert(0, Tensor("LABELS" if head.multi_label else "LABEL", "TYPE_STRING", (1,)))
    example = ([("TEXT", ["how do I reset my password"]), ("TEXT_PAIR", ["Open Settings, then Security."])]
               if head.text_pair else [("TEXT", ["the flight was delayed again"])])
    write_runtime_model(cfg, manifest, src, name, variant, folder, (inputs, outputs), TEMPLATES / "python.py",
                        TEMPLATES / "README-runtime.md",
                        shape_name=head.problem_type + (", text pairs" if head.text_pair else ""),
                        inputs=" and ".join(f"`{n}` (BYTES, dims [1])" for n in names),
                        outputs=", ".join(f"`{t.name}`" for t in outputs), activation=head.activation,
                        example=repr(example))

"""text-generation's export hooks: a decoder-only language model with its key/value cache.

The shared pipeline (``deploykit.export.pipeline``) calls ``Export``:

1. optimum's exporter writes one graph (``task="text-generation-with-past"``) that serves the
   prompt (an empty cache) and every later step (the cache of the tokens so far); its
   language-model head then computes the last position only (``last_position_logits``);
2. onnxruntime's transformer optimizer fuses what it recognises in the architecture (recorded,
   with the fusions it did not find);
3. INT8 is weight-only (``deploykit.export.quantize.quantize_weights``): every MatMul with a
   constant weight becomes onnxruntime's ``MatMulNBits`` with 8-bit blocks. By default it
   computes in int8 (``accuracy_level`` 4): each token's activations are quantized on their own,
   per block of the row, so a sequence's tokens still do not depend on its batch mates (dynamic
   activation quantization would share one scale per call) - parity measures it
   (``parity.batch_independence``). With float activations (``--int8-compute float``) the kernel
   dequantizes the weights at every call and decodes several times slower than the float graph
   on CPU (measured: docs/benchmarks.md);
4. parity on the held-out prompts, each variant run by the serving ``Generator`` (``parity``);
5. the manifest's task fields (``head.Generation``: cache layout, special tokens, chat template,
   generation defaults).

A weight-only INT8 that misses its bounds is marked not servable (a warning; the float graphs
are served); a float graph that misses them fails the export (exit 3).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import checkpoint as ckpt
from deploykit.config import ParityConfig
from deploykit.errors import BadInputError
from deploykit.export import onnx_export, optimize, quantize
from deploykit.export.parity import Column, ParityResult
from deploykit.export.pipeline import Graphs
from deploykit.export.quantize import MAX_PROTOBUF
from deploykit.manifest import VARIANT_FILES, Manifest
from deploykit.tasks.generation import parity
from deploykit.tasks.generation.head import CacheLayout, Generation

log = logging.getLogger(__name__)

OPTIMUM_TASK = "text-generation-with-past"  # optimum's task: the decoder with its cache as inputs and outputs
# What O2 should fuse in a decoder; what is absent is recorded as a missing fusion. (The
# optimizer's Python fusions do not match optimum's decoder attention; recorded honestly.)
EXPECTED_FUSIONS = {"Attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention"),
                    "SkipLayerNormalization": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")}
_ORT_DECODER = "gpt2"  # the optimizer's decoder fusions (RMSNorm/LayerNorm, GELU) for types it does not map


class Export:
    """The export hooks of text-generation (see ``deploykit.export.pipeline.Export``).

    Args:
        cfg: The stage's options (``ExportConfig`` for export, ``VerifyConfig`` for verify).
        checkpoint: The validated checkpoint.

    Raises:
        BadInputError: optimum-onnx cannot export the architecture with its KV cache.
    """

    def __init__(self, cfg: ParityConfig, checkpoint: Path) -> None:
        self.cfg, self.checkpoint = cfg, checkpoint
        onnx_export.check_supported(checkpoint, OPTIMUM_TASK)
        self.train_cfg = ckpt.train_config(checkpoint)

    def check_artifact(self, manifest: Manifest) -> None:
        """A decoder's checkpoint has nothing more to match than its task (checked by verify)."""

    def load(self) -> None:
        """The causal LM and its tokenizer, then the held-out prompts tokenized as training did."""
        self.model, self.tokenizer = load_model(self.checkpoint)
        self.rows = parity.load_prompts(self.cfg, self.train_cfg, self.tokenizer)

    def write(self, folder: Path) -> Graphs:
        """Steps 1-3 and the manifest's generation fields."""
        cfg, model = self.cfg, self.model
        onnx_export.write_tokenizer(self.tokenizer, folder / "tokenizer.json", None)
        shutil.copy(self.checkpoint / "config.json", folder / "config.json")
        fp32 = folder / VARIANT_FILES["fp32"]
        onnx_export.export_onnx(model, fp32, cfg.opset, OPTIMUM_TASK)
        last_position_logits(fp32)
        head, inputs = head_of(model, self.tokenizer, fp32)
        records: dict[str, dict[str, Any]] = {"fp32": {"fused_ops": {}}}
        if cfg.optimize != "none":
            model_type = _ort_type(model.config.model_type)
            info = optimize.optimize(fp32, folder / VARIANT_FILES["opt"], cfg.optimize, model.config,
                                     model_type=model_type, expected=EXPECTED_FUSIONS)
            records["opt"] = {"fused_ops": info["fused_ops"], "optimization": {
                "level": info["level"], "missing_fusions": info["missing_fusions"], "model_type": model_type}}
        if cfg.quantize != "none":
            source = folder / VARIANT_FILES["opt" if "opt" in records else "fp32"]
            int8 = folder / VARIANT_FILES["int8"]
            info = quantize.quantize_weights(source, int8, cfg.int8_block_size, compute=cfg.int8_compute)
            records["int8"] = {"fused_ops": optimize.fused_ops(int8), "quantization": info}
        return Graphs(head, context_length(model.config), inputs, records)

    def reference(self, head: Generation, max_length: int) -> parity.Reference:
        """PyTorch's first-step logits and greedy tokens of the prompts, up to the head's EOS ids."""
        return parity.reference(self.model, self.tokenizer, self.rows, self.cfg.generation_tokens,
                                head.eos_token_ids)

    def check(self, folder: Path, manifest: Manifest, variant: str, reference: parity.Reference) -> ParityResult:
        return parity.check_variant(folder, manifest, variant, self.rows, reference, self.tokenizer, self.cfg)

    def columns(self, reference: parity.Reference) -> list[Column]:
        return parity.columns(reference.metrics)

    def tolerated(self, variant: str, manifest: Manifest) -> str | None:
        """Weight-only INT8 is an extra: when it misses its bounds (tiny or undertrained models do)
        the float graphs are served; a float graph that misses them fails the export."""
        if variant != "int8":
            return None
        return (f"int8 (weight-only) missed its generation parity bounds, so it is marked not servable and the "
                f"default variant is {manifest.default_variant}; see the table above")


# --- the graphs ------------------------------------------------------------------------------

def load_model(checkpoint: Path) -> tuple[Any, Any]:
    """The checkpoint's causal LM (eager attention, eval mode) and its fast tokenizer.

    Raises:
        BadInputError: No fast tokenizer, or an encoder-decoder.
    """
    model, tokenizer = onnx_export.load_eager(checkpoint)
    if model.config.is_encoder_decoder:
        raise BadInputError(f"{checkpoint} is an encoder-decoder ({model.config.model_type}); deploykit "
                            "exports decoder-only language models (Llama, Qwen2, GPT-2, ...)")
    return model, tokenizer


def _ort_type(model_type: str) -> str:
    """The optimizer's model type for a decoder (optimum's map; GPT-2's fusions for the others)."""
    from optimum.onnxruntime.utils import ORTConfigManager

    try:
        return ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:
        return _ORT_DECODER


def last_position_logits(path: Path, output: str = "logits") -> bool:
    """Step 1b: make the graph compute ``output`` for the last position only (``[batch, 1, vocab]``).

    The language-model head is the biggest MatMul of a small decoder (hidden x vocabulary per
    position); generation reads only the last position's logits, so on a 128-token prompt the
    other 127 positions' logits are a fifth of the prompt step's work and a ``[batch, 128,
    vocab]`` tensor written for nothing (PyTorch's ``generate`` likewise asks for the last
    position only, ``logits_to_keep``). A ``Slice`` of the head's input to its last position is
    inserted before the head; every later step has one position and is unchanged. Hand-written
    because optimum's exporter has no option for it.

    Returns:
        Whether the graph was changed (False when ``output`` is not made by a MatMul, possibly
        behind Cast/Identity: the graph is left as it is).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    node, between = producers.get(output), []
    while node is not None and node.op_type in ("Cast", "Identity"):
        between.extend(node.output)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "MatMul":
        log.info("%s: %s is not made by a MatMul; the graph keeps every position's logits", path.name, output)
        return False
    between.extend(node.output)
    hidden = node.input[0]
    names = [f"deploykit_last_position_{k}" for k in ("starts", "ends", "axes", "out")]
    graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), n)
                             for v, n in zip((-1, np.iinfo(np.int64).max, 1), names))
    index = list(graph.node).index(node)
    graph.node.insert(index, helper.make_node("Slice", [hidden, *names[:3]], [names[3]], name=names[3]))
    node.input[0] = names[3]
    stale = [v for v in graph.value_info if v.name in between]  # shapes inferred with every position
    for v in stale:
        graph.value_info.remove(v)
    for out in graph.output:
        if out.name == output and len(out.type.tensor_type.shape.dim) == 3:
            out.type.tensor_type.shape.dim[1].Clear()
            out.type.tensor_type.shape.dim[1].dim_value = 1
    external = model.ByteSize() > MAX_PROTOBUF
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp), save_as_external_data=external, location=path.name + "_data" if external else None)
    tmp.replace(path)
    log.info("%s: the language-model head computes the last position only", path.name)
    return True


def head_of(model: Any, tokenizer: Any, graph: Path) -> tuple[Generation, list[str]]:
    """The manifest's generation fields and the graph's input names, from the model and its graph."""
    import onnx

    inputs = {i.name: i for i in onnx.load(str(graph), load_external_data=False).graph.input}
    dims = [d.dim_value for d in inputs["past_key_values.0.key"].type.tensor_type.shape.dim]
    config, gconfig = model.config, model.generation_config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    eos = gconfig.eos_token_id if gconfig.eos_token_id is not None else tokenizer.eos_token_id
    eos = [int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None]
    if not eos:
        raise BadInputError("the checkpoint names no EOS token (generation_config.json or the tokenizer); "
                            "a completion could not end: set eos_token_id")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gconfig.pad_token_id
    defaults = dict(Generation.DEFAULTS)
    if gconfig.do_sample:  # the model's own sampling settings become the defaults
        defaults.update(temperature=float(gconfig.temperature or 1.0), top_p=float(gconfig.top_p or 1.0),
                        top_k=int(gconfig.top_k or 0))
    template = getattr(tokenizer, "chat_template", None)
    head = Generation(cache=CacheLayout(layers=int(layers), kv_heads=int(dims[1]), head_size=int(dims[3])),
                      vocab_size=int(config.vocab_size), eos_token_ids=tuple(eos),
                      pad_token_id=int(pad if pad is not None else eos[0]), bos_token_id=tokenizer.bos_token_id,
                      chat_template=template if isinstance(template, str) else None, defaults=defaults)
    return head, list(inputs)


def context_length(config: Any) -> int:
    """The most tokens (prompt + generated) the model takes: its position table's size."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise BadInputError(f"the {config.model_type} config names no context length (max_position_embeddings)")

"""Export and parity of a text-generation checkpoint (a decoder-only language model).

The same five steps as a classifier's export, for a decoder with its key/value cache:

1. optimum's exporter writes one graph (``task="text-generation-with-past"``) that serves the
   prompt (an empty cache) and every later step (the cache of the tokens so far); its
   language-model head then computes the last position only (``last_position_logits``);
2. onnxruntime's transformer optimizer fuses what it recognises in the architecture (recorded,
   with the fusions it did not find);
3. INT8 is weight-only: every MatMul with a constant weight becomes onnxruntime's
   ``MatMulNBits`` with 8-bit blocks. By default it computes in int8 (``accuracy_level`` 4):
   each token's activations are quantized on their own, per block of the row, so a sequence's
   tokens still do not depend on its batch mates (dynamic activation quantization would share
   one scale per call) - parity measures it (``parity.batch_independence``). With float
   activations (``--int8-compute float``) the kernel dequantizes the weights at every call and
   decodes several times slower than the float graph on CPU (measured: docs/benchmarks.md);
4. parity on the held-out prompts, each variant run by the serving ``Generator``: the tokenizer
   (the artifact's ids equal the checkpoint tokenizer's), the first step's logits (max |diff|),
   the share of prompts whose first greedy tokens equal PyTorch's ``generate``, BLEU/chrF
   of the generations against the references compared with PyTorch's own, and how far a
   prompt's logits move with batch mates (``batch_independence``);
5. the manifest (task ``text-generation``: cache layout, special tokens, chat template,
   generation defaults), written last.

A variant that misses its bounds is marked not servable; no servable variant is exit 3.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deploykit.config import GENERATION, ExportConfig, ParityConfig, VerifyConfig
from deploykit.errors import BadInputError, ParityError
from deploykit.manifest import Manifest, ParityRows, rows_sha256
from deploykit.tasks.generation.head import CacheLayout, Generation

log = logging.getLogger(__name__)

TASK = "text-generation-with-past"  # optimum's task: the decoder with its cache as inputs and outputs
FILES = {"fp32": "model.onnx", "opt": "model.opt.onnx", "int8": "model.int8.onnx"}
PRECISION = {"fp32": "fp32", "opt": "fp32", "int8": "int8"}
# What O2 should fuse in a decoder; what is absent is recorded as a missing fusion. (The
# optimizer's Python fusions do not match optimum's decoder attention; recorded honestly.)
EXPECTED_FUSIONS = {"Attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention"),
                    "SkipLayerNormalization": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")}
_ORT_DECODER = "gpt2"  # the optimizer's decoder fusions (RMSNorm/LayerNorm, GELU) for types it does not map
_MAX_PROTOBUF = 1_800_000_000  # graphs near protobuf's 2 GB limit keep their weights as external data


# --- the held-out prompts --------------------------------------------------------------------

@dataclass
class Prompts:
    """Held-out prompts (text or chat messages), their token ids as training fed them (left
    truncated to its max length), and the reference completions."""

    prompts: list[Any]
    ids: list[list[int]]
    references: list[str]
    source: str
    split: str
    data_sha256: str
    columns: dict[str, str | None]

    def record(self, batch_sizes: Sequence[int]) -> ParityRows:
        """The manifest's ``evaluation`` record of these prompts (verify re-checks them)."""
        texts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in self.prompts]
        return ParityRows(source=self.source, split=self.split, n=len(self.prompts), batch_sizes=tuple(batch_sizes),
                          sha256=rows_sha256(texts, self.references), **self.columns)


def load_prompts(cfg: ParityConfig, train_cfg: Any, tokenizer: Any) -> Prompts:
    """Rebuild the checkpoint's split of prompts (same seed and ratios) and tokenize them as training did.

    Raises:
        BadInputError: Bad data source or columns, or no prompts.
    """
    from deploykit import data
    from deploykit.tasks.generation import data as gen_data
    from deploykit.tasks.generation import prompts

    dcfg = data.rebuild_config(train_cfg, data=cfg.data, prompt_column=cfg.prompt_column,
                               completion_column=cfg.completion_column, messages_column=cfg.messages_column)
    pairs, sha = gen_data.held_out(dcfg, cfg.split)
    n = len(pairs) if cfg.max_eval_samples is None else min(len(pairs), cfg.max_eval_samples)
    if n == 0:
        raise BadInputError(f"the {cfg.split} split of {dcfg.data} has no prompts to check parity on")
    pairs = gen_data.Pairs(pairs.prompts[:n], pairs.completions[:n])
    examples = prompts.encode(prompts.prepare_tokenizer(tokenizer, "the checkpoint"), pairs, dcfg.max_length)
    source = dcfg.data if not Path(dcfg.data).exists() else str(Path(dcfg.data).resolve())
    chat = not isinstance(pairs.prompts[0], str)
    columns = {"prompt_column": None if chat else dcfg.prompt_column,
               "completion_column": None if chat else dcfg.completion_column,
               "messages_column": dcfg.messages_column if chat else None}
    return Prompts(list(pairs.prompts), examples.prompts(), list(pairs.completions), source, cfg.split, sha, columns)


# --- the PyTorch reference -------------------------------------------------------------------

@dataclass
class Reference:
    """PyTorch's first-step logits and greedy tokens of every prompt, and its text metrics."""

    logits: np.ndarray
    tokens: list[list[int]]
    texts: list[str]
    metrics: dict[str, Any]


def reference(model: Any, tokenizer: Any, held: Prompts, tokens: int, eos: Sequence[int]) -> Reference:
    """PyTorch's answers on the held-out prompts: each prompt's last-position logits (unpadded)
    and ``generate``'s greedy tokens (batched, left padded, up to the first EOS)."""
    import torch
    from tqdm.auto import tqdm

    from deploykit.tasks.generation import decoding as generation

    rows = []
    with torch.inference_mode():
        for ids in tqdm(held.ids, desc="pytorch first step", unit="prompt", leave=False):
            rows.append(model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy())
    new = generation.generate(model, tokenizer, held.ids, max_new_tokens=tokens, eos_token_ids=eos, progress=True)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return Reference(np.stack(rows), new, texts, _text_metrics(texts, held.references))


def _text_metrics(texts: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    from deploykit.tasks.generation import decoding as generation

    metrics = generation.text_metrics(texts, references)
    return {k: metrics[k] for k in ("bleu", "chrf", "exact_match", "n")}


# --- parity of one variant -------------------------------------------------------------------

@dataclass
class Result:
    """Parity numbers, held-out metrics and bound failures of one variant."""

    name: str
    precision: str
    first_step_max_abs_diff: float = float("nan")
    token_agreement: float = 0.0
    tokens_compared: int = 0
    tokenizer_mismatches: int = 0
    bleu_drop: float = float("nan")
    chrf_drop: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    batch_independence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, check: str, value: Any, limit: Any, missed_by: float | None = None) -> None:
        self.failures.append({"check": check, "value": value, "limit": limit, "missed_by": missed_by})

    def parity(self) -> dict[str, Any]:
        """The manifest's ``parity`` entry."""
        return {"first_step_max_abs_diff": self.first_step_max_abs_diff, "token_agreement": self.token_agreement,
                "tokens_compared": self.tokens_compared, "tokenizer_mismatches": self.tokenizer_mismatches,
                "bleu_drop": self.bleu_drop, "chrf_drop": self.chrf_drop, "passed": self.passed,
                "bounds": self.bounds, "failures": self.failures,
                **({"batch_independence": self.batch_independence} if self.batch_independence else {})}


def bounds_for(precision: str, cfg: ParityConfig) -> dict[str, float]:
    """The gates of a precision: fp32 graphs match PyTorch's greedy tokens on every prompt; INT8
    ones on most prompts over fewer tokens, losing at most a little BLEU."""
    if precision == "int8":
        return {"tokens": cfg.int8_generation_tokens, "min_prompt_agreement": cfg.int8_min_prompt_agreement,
                "max_bleu_drop": cfg.int8_max_bleu_drop}
    return {"tokens": cfg.generation_tokens, "min_prompt_agreement": cfg.fp32_min_agreement}


def agreement(tokens: Sequence[Sequence[int]], reference_tokens: Sequence[Sequence[int]], n: int) -> float:
    """Share of prompts whose first ``n`` generated tokens (fewer if EOS came first) equal the reference's."""
    same = [list(a[:n]) == list(b[:n]) for a, b in zip(tokens, reference_tokens)]
    return float(np.mean(same)) if same else 0.0


def _batches(n: int, sizes: Sequence[int]) -> list[slice]:
    out, start, i = [], 0, 0
    while start < n:
        size = sizes[i % len(sizes)]
        out.append(slice(start, min(n, start + size)))
        start, i = start + size, i + 1
    return out


def check_variant(folder: Path, manifest: Manifest, name: str, held: Prompts, ref: Reference, tokenizer: Any,
                  cfg: ParityConfig) -> Result:
    """Compare one variant, run by the serving ``Generator``, with PyTorch: tokenizer, first-step
    logits, greedy tokens (in batches cycling through ``--batch-sizes``), BLEU/chrF.

    Returns:
        The result; ``failures`` lists every missed bound.
    """
    from deploykit.tasks.generation.runtime import Generator, Sampling

    precision = manifest.variants[name].precision
    result = Result(name, precision, bounds=bounds_for(precision, cfg))
    try:
        gen = Generator.of_variant(folder, manifest, name, max_batch_size=max(cfg.batch_size_list))
    except BadInputError as exc:
        result.fail("interface", str(exc), "the manifest's inputs, outputs and cache")
        return result
    # The artifact's tokenizer must give the checkpoint tokenizer's ids, or serving answers other prompts.
    result.tokenizer_mismatches = sum(gen.encode(p) != _hf_ids(tokenizer, p) for p in held.prompts)
    if result.tokenizer_mismatches:
        result.fail("tokenizer", result.tokenizer_mismatches, 0)
    diffs = []
    for ids, row in zip(held.ids, ref.logits):
        n = len(ids)
        logits, _ = gen.forward(np.array([ids], np.int64), np.ones((1, n), np.int64),
                                np.arange(n, dtype=np.int64)[None], gen.empty_cache(1))
        diffs.append(float(np.abs(logits[0].astype(np.float64) - row).max()))
    result.first_step_max_abs_diff = max(diffs)
    result.batch_independence = batch_independence(gen, held.ids)
    tokens: list[list[int]] = []
    texts: list[str] = []
    for part in _batches(len(held.ids), cfg.batch_size_list):
        for c in gen.generate_ids(held.ids[part], Sampling(max_new_tokens=cfg.generation_tokens)):
            tokens.append(c.token_ids)
            texts.append(c.text)
    b = result.bounds
    result.tokens_compared = int(b["tokens"])
    result.token_agreement = agreement(tokens, ref.tokens, result.tokens_compared)
    result.metrics = _text_metrics(texts, held.references)
    result.bleu_drop = ref.metrics["bleu"] - result.metrics["bleu"]
    result.chrf_drop = ref.metrics["chrf"] - result.metrics["chrf"]
    if result.token_agreement < b["min_prompt_agreement"]:
        result.fail("token_agreement", result.token_agreement, b["min_prompt_agreement"],
                    b["min_prompt_agreement"] - result.token_agreement)
    if "max_bleu_drop" in b and result.bleu_drop > b["max_bleu_drop"]:
        result.fail("bleu_drop", result.bleu_drop, b["max_bleu_drop"], result.bleu_drop - b["max_bleu_drop"])
    return result


MIXED_BATCH = 8  # rows per batch in the batch-independence check (the service's typical decode batch)


def batch_independence(gen: Any, prompts: Sequence[Sequence[int]], batch_size: int = MIXED_BATCH) -> dict[str, Any]:
    """How far a prompt's logits move with its batch mates: the prompts cut to one length (their
    last tokens, so no padding is involved), each alone against the same rows in batches of
    ``batch_size``, over the prompt step and one cached decoding step (the two shapes the
    weight-only INT8 kernels see). Float graphs and per-row activation quantization give 0.

    Returns:
        The manifest's ``parity.batch_independence``: ``{"max_abs_diff", "mean_abs_diff", "rows",
        "mixed_batch_size", "prompt_tokens"}`` (the classifier's record, read by
        ``Variant.batch_independent``).
    """
    width = max(1, min(len(p) for p in prompts))
    rows = np.array([list(p)[-width:] for p in prompts], np.int64)

    def two_steps(part: np.ndarray) -> np.ndarray:
        n = len(part)
        first, cache = gen.forward(part, np.ones_like(part), np.tile(np.arange(width, dtype=np.int64), (n, 1)),
                                   gen.empty_cache(n))
        second, _ = gen.forward(part[:, :1].copy(), np.ones((n, width + 1), np.int64),
                                np.full((n, 1), width, np.int64), cache)
        return np.stack([first, second], axis=1)

    alone = np.concatenate([two_steps(rows[i:i + 1]) for i in range(len(rows))])
    mixed = np.concatenate([two_steps(rows[s:s + batch_size]) for s in range(0, len(rows), batch_size)])
    diff = np.abs(alone.astype(np.float64) - mixed)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "rows": len(rows),
            "mixed_batch_size": batch_size, "prompt_tokens": width}


def _hf_ids(tokenizer: Any, prompt: Any) -> list[int]:
    """The checkpoint tokenizer's ids of a prompt (untruncated), as training built them."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def table(results: Sequence[Result], ref_metrics: dict[str, Any]) -> str:
    """A plain-text table: one row per variant, its numbers and the bounds it missed."""
    from deploykit.export.parity import _fmt

    rows = [("variant", "first-step max|diff|", "prompts equal", "tokens", "BLEU", "chrF", "batch mates |diff|",
             "result"),
            ("pytorch", "-", "-", "-", f"{ref_metrics['bleu']:.2f}", f"{ref_metrics['chrf']:.2f}", "-", "reference")]
    for r in results:
        verdict = "pass" if r.passed else "; ".join(f"FAIL {f['check']} {_fmt(f['value'])} vs {_fmt(f['limit'])}"
                                                     for f in r.failures)
        rows.append((r.name, _fmt(r.first_step_max_abs_diff), _fmt(r.token_agreement), str(r.tokens_compared),
                     f"{r.metrics.get('bleu', float('nan')):.2f}", f"{r.metrics.get('chrf', float('nan')):.2f}",
                     _fmt(r.batch_independence.get("max_abs_diff")), verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)


# --- the graphs ------------------------------------------------------------------------------

def load_model(checkpoint: Path) -> tuple[Any, Any]:
    """The checkpoint's causal LM (eager attention, eval mode) and its fast tokenizer.

    Raises:
        BadInputError: No fast tokenizer, or an encoder-decoder.
    """
    from deploykit import checkpoint as ckpt

    model, tokenizer = ckpt.load_model(checkpoint, attn_implementation="eager")
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(f"{checkpoint}: its tokenizer has no fast (Rust) version, which the serving "
                            "runtime needs as tokenizer.json; save a fast tokenizer into the checkpoint")
    if model.config.is_encoder_decoder:
        raise BadInputError(f"{checkpoint} is an encoder-decoder ({model.config.model_type}); deploykit "
                            "exports decoder-only language models (Llama, Qwen2, GPT-2, ...)")
    return model, tokenizer


def write_tokenizer(tokenizer: Any, path: Path) -> Path:
    """``tokenizer.json`` without padding or truncation: the runtime pads batches on the left and
    refuses a prompt longer than the context rather than cutting it."""
    backend = type(tokenizer.backend_tokenizer).from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.save(str(path))
    return path


def _ort_type(model_type: str) -> str:
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
    external = model.ByteSize() > _MAX_PROTOBUF
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp), save_as_external_data=external, location=path.name + "_data" if external else None)
    tmp.replace(path)
    log.info("%s: the language-model head computes the last position only", path.name)
    return True


def optimize(src: Path, dst: Path, level: str, config: Any) -> dict[str, Any]:
    """Step 2: onnxruntime's optimizer on the decoder graph, with the decoder's expected fusions."""
    from deploykit.export import optimize as opt

    info = opt.optimize(src, dst, level, config, model_type=_ort_type(config.model_type))
    info["missing_fusions"] = ([n for n, kinds in EXPECTED_FUSIONS.items() if not any(info["fused_ops"].get(k)
                                                                                     for k in kinds)]
                               if level == "O2" else [])
    if info["missing_fusions"]:
        log.info("onnxruntime's optimizer found no %s fusion in the %s decoder (recorded as missing_fusions)",
                 "/".join(info["missing_fusions"]), config.model_type)
    return info


@contextmanager
def _quiet(name: str):
    """The weight-only quantizer logs a line per node at INFO; keep it to warnings."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# onnxruntime's MatMulNBits accuracy levels: 0 keeps the activations float (weights dequantized at
# each call); 4 quantizes them to int8 per row and block, which runs MLAS's int8 kernels.
ACCURACY_LEVEL = {"float": 0, "int8": 4}


def quantize_weights(src: Path, dst: Path, block_size: int, bits: int = 8, compute: str = "int8") -> dict[str, Any]:
    """Step 3: weight-only INT8 - each MatMul with a constant weight becomes ``MatMulNBits``
    (symmetric ``bits``-bit blocks of ``block_size`` weights), computing in ``compute``
    (``int8``: each row's activations quantized per block, on their own; ``float``).

    Returns:
        The manifest's ``quantization`` entry (with the MatMuls left in float).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    with _quiet("onnxruntime.quantization.matmul_nbits_quantizer"):
        model = onnx.load(str(src))
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=bits,
                                              accuracy_level=ACCURACY_LEVEL[compute])
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        external = model.ByteSize() > _MAX_PROTOBUF
        quantizer.model.save_model_to_file(str(dst), external)
    graph = onnx.load(str(dst), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    activations = "int8 per row and block" if compute == "int8" else "float"
    info = {"mode": "weight-only", "format": "MatMulNBits", "bits": bits, "block_size": block_size,
            "symmetric": True, "compute": compute, "accuracy_level": ACCURACY_LEVEL[compute],
            "activations": activations, "source": src.name,
            "quantized_ops": {"MatMulNBits": ops.count("MatMulNBits"), "float_MatMul": ops.count("MatMul"),
                              "float_Gemm": ops.count("Gemm")},
            "float_nodes": [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]}
    log.info("weight-only INT8 (%s compute) %s -> %s: %s", compute, src.name, dst.name, info["quantized_ops"])
    return info


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


# --- the stage -------------------------------------------------------------------------------

def run(cfg: ExportConfig) -> Path:
    """Export a text-generation checkpoint to a verified artifact folder (see the module docstring).

    Returns:
        The artifact folder.

    Raises:
        BadInputError: Not a decoder checkpoint, bad data, --out not writable (see ``export.run``).
        ParityError: A variant missed its bounds (after the artifact is written with it marked
            not servable), unless ``cfg.allow_parity_failure``.
    """
    import onnxruntime as ort

    from deploykit import checkpoint as ckpt
    from deploykit.export import _prepare_out, onnx_export, provenance, quantize
    from deploykit.files import atomic_folder
    from deploykit.manifest import Variant

    if cfg.quantize == "static":
        raise BadInputError("--quantize static is for text-classification; a text-generation export "
                            "quantizes weights only (--quantize dynamic, the default) or not at all (none)")
    checkpoint = ckpt.validate(cfg.checkpoint)
    onnx_export.check_supported(checkpoint, TASK)
    train_cfg = ckpt.train_config(checkpoint)
    out = _prepare_out(cfg)
    model, tokenizer = load_model(checkpoint)
    held = load_prompts(cfg, train_cfg, tokenizer)
    log.info("parity prompts: %d from the %s split of %s", len(held.prompts), held.split, held.source)

    with atomic_folder(out) as tmp:
        write_tokenizer(tokenizer, tmp / "tokenizer.json")
        shutil.copy(checkpoint / "config.json", tmp / "config.json")
        onnx_export.export_onnx(model, tmp / FILES["fp32"], cfg.opset, task=TASK)
        last_position_logits(tmp / FILES["fp32"])
        head, inputs = head_of(model, tokenizer, tmp / FILES["fp32"])
        ref = reference(model, tokenizer, held, cfg.generation_tokens, head.eos_token_ids)
        records: dict[str, dict[str, Any]] = {"fp32": {"fused_ops": {}}}
        if cfg.optimize != "none":
            info = optimize(tmp / FILES["fp32"], tmp / FILES["opt"], cfg.optimize, model.config)
            records["opt"] = {"fused_ops": info["fused_ops"], "optimization": {
                "level": info["level"], "missing_fusions": info["missing_fusions"], "model_type": _ort_type(
                    model.config.model_type)}}
        if cfg.quantize != "none":
            source = "opt" if "opt" in records else "fp32"
            info = quantize_weights(tmp / FILES[source], tmp / FILES["int8"], cfg.int8_block_size,
                                    compute=cfg.int8_compute)
            records["int8"] = {"fused_ops": {}, "quantization": info}
            from deploykit.export import optimize as opt

            records["int8"]["fused_ops"] = opt.fused_ops(tmp / FILES["int8"])
        draft = Manifest.create(
            tmp, name=cfg.name, head=head, max_length=context_length(model.config), inputs=inputs,
            variants=[Variant(n, FILES[n], PRECISION[n], servable=False, **r) for n, r in records.items()],
            default=cfg.default_variant, reference_metrics=ref.metrics, evaluation=held.record(cfg.batch_size_list),
            provenance=provenance.provenance(checkpoint, cfg.opset, held.data_sha256, quantize.cpu_has_vnni()))
        results = [check_variant(tmp, draft, n, held, ref, tokenizer, cfg) for n in draft.variants]
        report = table(results, ref.metrics)
        log.info("generation parity on %d %s prompts:\n%s", len(held.prompts), held.split, report)
        manifest = draft.judged({r.name: (r.parity(), r.metrics, r.passed) for r in results}, cfg.default_variant)
        manifest.write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
    log.info("wrote %s (default variant %s; onnxruntime %s)", out, manifest.default_variant, ort.__version__)
    _raise_failures(results, report, cfg.allow_parity_failure, f"marked not servable in {out / 'manifest.json'}")
    return out


def _raise_failures(results: Sequence[Result], report: str, allow: bool, where: str) -> None:
    """Warn about variants that missed their bounds; exit 3 (ParityError) when none passed."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    message = f"{len(failed)} variant(s) missed their generation parity bounds and are {where}:\n{report}"
    if len(failed) == len(results) and not allow:
        raise ParityError(message + "\n(pass --allow-parity-failure to accept them as not servable)")
    log.warning("%s", message)


def verify(cfg: VerifyConfig, manifest: Manifest, checkpoint: Path) -> dict[str, Any]:
    """``deploykit verify`` of a text-generation artifact (its files already checked): parity of
    every variant on the prompts export recorded (or the ones asked for).

    Raises:
        ParityError: A variant the manifest marks servable misses its bounds (exit code 3).
    """
    recorded = manifest.evaluation
    asked = cfg.rows_asked()
    if not asked and recorded is not None:
        cfg = replace(cfg, data=recorded.source, split=recorded.split, prompt_column=recorded.prompt_column,
                      completion_column=recorded.completion_column, messages_column=recorded.messages_column,
                      max_eval_samples=recorded.n)
    else:
        cfg = replace(cfg, split=cfg.split or "test")
    from deploykit import checkpoint as ckpt

    model, tokenizer = load_model(checkpoint)
    held = load_prompts(cfg, ckpt.train_config(checkpoint), tokenizer)
    rows = held.record(cfg.batch_size_list)
    same = None if recorded is None or recorded.sha256 is None else rows.sha256 == recorded.sha256
    if same is False and not asked:
        log.warning("verify: the prompts export recorded changed since export (their sha256 differs)")
    ref = reference(model, tokenizer, held, cfg.generation_tokens, manifest.head_as(Generation).eos_token_ids)
    results = [check_variant(Path(cfg.artifact), manifest, n, held, ref, tokenizer, cfg) for n in manifest.variants]
    report = table(results, ref.metrics)
    log.info("generation parity of %s on %s:\n%s", cfg.artifact, rows.describe(), report)
    failed = [r.name for r in results if not r.passed and manifest.variants[r.name].servable]
    if failed:
        raise ParityError(f"variant(s) {', '.join(failed)} of {cfg.artifact}, marked servable, missed their "
                          f"generation parity bounds on {rows.describe()}:\n{report}\nre-export the artifact")
    return {"reference_metrics": ref.metrics, "table": report,
            "rows": {**rows.to_json(), "as_exported": not asked, "same_as_export": same},
            "variants": {r.name: {"parity": r.parity(), "metrics": r.metrics} for r in results}}

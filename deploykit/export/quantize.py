"""Step 3: INT8 graphs with onnxruntime's quantizers, in three schemes.

*Static* QDQ (the default family, ``Static``): activation ranges calibrated once on training
rows, per-channel int8 weights, uint8 asymmetric activations, on the plain (unfused) graph's
MatMul/Gemm nodes, whose outputs stay float so that onnxruntime fuses each
DequantizeLinear-MatMul group into one ``MatMulIntegerToFloat`` kernel at load. Fixed scales make
a text's logits independent of its batch mates. *Dynamic* (``Dynamic``): per-channel weights
quantized ahead of time, activations scaled per call from the whole batch (so a text's logits
move with its batch mates); it runs on the fused graph so that ``Attention`` becomes
``QAttention``. Both write ``model.int8.onnx``; text-classification chooses between them by
measurement (its ``int8_schemes``, with operators kept in float by its ``int8_fallback``).
*Weight-only* (``quantize_weights``, a decoder's): every MatMul with a constant weight becomes
``MatMulNBits`` with 8-bit blocks, computing in int8 with each row's activations quantized on
their own.
"""

from __future__ import annotations

import logging
import contextlib
import io
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

# Nodes that do integer matrix products after dynamic or static (QDQ) quantization.
QUANTIZED_MATMUL_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                        "QLinearMatMul", "QGemm")


# Operators that read a weight matrix; one still reading a float initializer holds float weights.
WEIGHT_OPS = ("MatMul", "Gemm", "Attention", "MultiHeadAttention", "EmbedLayerNormalization", "Gather")
# Static schemes' calibration methods (onnxruntime's names in lower case).
CALIBRATION_METHODS = ("minmax", "entropy")
# Most rows in one calibration batch (rows of one token length each, so never padded).
CALIBRATION_BATCH = 32
# Graphs near protobuf's 2 GB limit keep their weights as external data.
MAX_PROTOBUF = 1_800_000_000


@contextmanager
def _quiet_quantizer(logger: str = ""):
    """onnxruntime's quantizers log one INFO line per tensor (on the root logger; the weight-only
    one on its own) and its histogram calibrators print to stdout (which would mix with a
    command's output); keep both quiet."""
    quantizer_log = logging.getLogger(logger)
    level = quantizer_log.level
    quantizer_log.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        quantizer_log.setLevel(level)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has VNNI (AVX512-VNNI or AVX-VNNI) integer dot-product instructions.

    Without VNNI, x86 int8 kernels add u8*s8 pairs into int16 and can saturate, which
    ``reduce_range`` (7-bit weights) avoids. Reads ``/proc/cpuinfo`` (Linux); elsewhere it
    answers False, the safe choice.

    Args:
        cpuinfo: The text of /proc/cpuinfo (read from the system when None).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def choose_reduce_range(setting: str) -> bool:
    """``reduce_range`` for the ``--reduce-range`` setting (auto: on exactly when the CPU lacks VNNI)."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return not cpu_has_vnni()


def quantized_matmuls(path: Path) -> dict[str, int]:
    """Count the integer matrix-product nodes of a quantized graph, by type (and float MatMuls left)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node)
    result = {op: counts[op] for op in QUANTIZED_MATMUL_OPS if counts.get(op)}
    result["float_MatMul"] = counts.get("MatMul", 0)
    return result


def float_weight_ops(path: Path) -> dict[str, int]:
    """Operators that still hold float weights, by type: those of ``WEIGHT_OPS`` reading a float
    initializer of two or more dimensions (an integer or QDQ graph's quantized ones read int8
    weights or a DequantizeLinear output instead).

    Args:
        path: An ONNX graph.

    Returns:
        ``{op_type: count}``, sorted by type (empty when every weight is integer).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}
    counts = Counter(n.op_type for n in graph.node
                     if n.op_type in WEIGHT_OPS and any(i in floats for i in n.input))
    return dict(sorted(counts.items()))


def ffn_matmuls(path: Path, layers: int) -> list[str]:
    """Names of the feed-forward MatMul/Gemm nodes of the first ``layers`` transformer layers.

    The exporters name nodes after the module path (``.../layer.3/intermediate/dense/MatMul``,
    DistilBERT ``.../layer.3/ffn/lin1/MatMul``); in every encoder we export, a layer's MatMuls
    outside ``attention`` are its feed-forward ones.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    prefixes = tuple(f"layer.{i}/" for i in range(layers))
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and "attention" not in n.name
            and any(p in n.name for p in prefixes)]


def quantize_dynamic(src: Path, dst: Path, reduce_range: bool, float_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic INT8 quantization with per-channel int8 weights.

    Args:
        src: The fused graph (or the plain one when optimization is off).
        dst: Where to write ``model.int8.onnx``.
        reduce_range: Quantize weights to 7 bits (for CPUs without VNNI).
        float_nodes: Names of nodes to leave in float (see ``ffn_matmuls`` and ``int8_fallback``).

    Returns:
        The manifest's ``quantization`` entry.
    """
    write_dynamic(src, dst, reduce_range, float_nodes)
    return dynamic_info(src, dst, reduce_range, float_nodes)


def write_dynamic(src: Path, dst: Path, reduce_range: bool, float_nodes: Sequence[str] = (),
                  only_nodes: Sequence[str] = ()) -> None:
    """Write the dynamic INT8 graph of ``src`` to ``dst`` (``quantize_dynamic`` without the report).

    Args:
        src: The float graph.
        dst: Where to write the INT8 graph.
        reduce_range: Quantize weights to 7 bits.
        float_nodes: Names of nodes to leave in float.
        only_nodes: Quantize these nodes alone (empty: every node the quantizer supports).
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    # The fused graph has contrib ops whose outputs shape inference cannot type; without a
    # default tensor type the quantizer fails with "Unable to find data type for weight_name".
    with _quiet_quantizer():
        ort_quantize_dynamic(src, dst, per_channel=True, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, nodes_to_exclude=list(float_nodes),
                             nodes_to_quantize=list(only_nodes),
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def dynamic_info(src: Path, dst: Path, reduce_range: bool, float_nodes: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``quantization`` entry of a graph ``write_dynamic`` wrote (reads ``dst``)."""
    info = {"mode": "dynamic", "per_channel": True, "reduce_range": reduce_range,
            "weight_type": "int8", "source": src.name, "float_nodes": list(float_nodes),
            "quantized_ops": quantized_matmuls(dst)}
    log.debug("quantized %s -> %s: %s", src.name, dst.name, info["quantized_ops"])
    return info




# --- the two schemes, as the fallback search and the scheme choice drive them ------------------

def candidate_nodes(path: Path) -> dict[str, int]:
    """Nodes that onnxruntime's dynamic quantizer turns into integer operators, by the names
    ``nodes_to_exclude`` knows them by, with the number of weights each one reads.

    Those of the quantizer's operator types (MatMul, Attention, Gather, EmbedLayerNormalization,
    ...) that read a float weight matrix from the graph's initializers (a MatMul of two
    activations stays float anyway), and every plain Gemm: the dynamic quantizer first rewrites
    Gemm as a MatMul named ``<gemm>_MatMul`` (plus an Add), and quantizes that.
    """
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    nodes = {}
    for node, size in weight_readers(path):
        if node.op_type in IntegerOpsRegistry:
            nodes[node.name] = size
        elif node.op_type == "Gemm" and _plain_gemm(node):
            nodes[f"{node.name}_MatMul"] = size
    return nodes


def weight_readers(path: Path) -> list[tuple[Any, int]]:
    """Every named node of the graph that reads a float weight matrix (an initializer of 2 or
    more dimensions), with the number of weights it reads: what a quantizer can act on (a
    MatMul of two activations reads none)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name: int(np.prod(t.dims)) for t in graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}
    readers = [(node, sum(weights.get(i, 0) for i in node.input)) for node in graph.node if node.name]
    return [(node, size) for node, size in readers if size]


def _plain_gemm(node: Any) -> bool:
    """A Gemm the quantizer rewrites as MatMul: alpha = beta = 1 and A not transposed."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and attrs.get("transA", 0) == 0


@dataclass
class Dynamic:
    """Dynamic INT8 (``quantize_dynamic``), as ``int8_fallback.search`` drives it."""

    reduce_range: bool
    scheme: str = "dynamic"

    def candidates(self, src: Path) -> dict[str, int]:
        """The nodes this scheme turns into integer operators, with their weight counts."""
        return candidate_nodes(src)

    def write(self, src: Path, dst: Path, float_nodes: Sequence[str] = (), only_nodes: Sequence[str] = ()) -> None:
        write_dynamic(src, dst, self.reduce_range, float_nodes, only_nodes)

    def info(self, src: Path, dst: Path, float_nodes: Sequence[str]) -> dict[str, Any]:
        return {"scheme": self.scheme, **dynamic_info(src, dst, self.reduce_range, float_nodes),
                "float_weight_ops": float_weight_ops(dst)}


class _Reader:
    """onnxruntime's calibration data reader over prepared feeds (``set_range`` and ``len`` let
    the histogram calibrators take them one stride at a time)."""

    def __init__(self, feeds: Sequence[dict[str, Any]]) -> None:
        self.feeds, self.window, self.position = list(feeds), list(feeds), 0

    def get_next(self) -> dict[str, Any] | None:
        if self.position >= len(self.window):
            return None
        self.position += 1
        return self.window[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.window, self.position = self.feeds[start_index:end_index], 0


def calibration_feeds(runtime: Any, texts: Sequence[str], batch: int = CALIBRATION_BATCH) -> list[dict[str, Any]]:
    """Calibration batches of ``texts`` as the runtime tokenizes them, never padded: rows are
    grouped by token length, at most ``batch`` rows of one length per batch, so no padding
    position ever widens a calibrated range.

    Args:
        runtime: A ``deploykit.runtime.Runtime`` (its tokenizer, truncation and input dtypes).
        texts: Training rows.
        batch: Most rows per batch.

    Returns:
        Feeds (numpy arrays by input name), shortest rows first.
    """
    by_length: dict[int, list[Any]] = {}
    for row in runtime.tokenize(texts):
        by_length.setdefault(row.length, []).append(row)
    return [runtime.feeds(rows[i:i + batch]) for length, rows in sorted(by_length.items())
            for i in range(0, len(rows), batch)]


@dataclass
class Static:
    """Static QDQ INT8 calibrated with one method; the ranges are computed by the first ``write``
    and reused from ``cache`` by every later one (the fallback search writes dozens of graphs).

    Only MatMul/Gemm are quantized, inputs only: quantizing LayerNorm, Softmax or the embeddings
    adds error without speed on CPU, and a float MatMul output lets onnxruntime fuse the
    DequantizeLinear pair and the MatMul into ``MatMulIntegerToFloat`` (no requantization).
    """

    method: str
    reduce_range: bool
    feeds: Sequence[dict[str, Any]] = field(repr=False)
    cache: Path
    scheme: str = ""

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}")
        self.scheme = self.scheme or f"static-{self.method}"

    def candidates(self, src: Path) -> dict[str, int]:
        """MatMul/Gemm nodes that read a float weight matrix (by name), with their weight counts;
        a MatMul of two activations (attention's QK^T and its V product) has none."""
        return {node.name: size for node, size in weight_readers(src) if node.op_type in ("MatMul", "Gemm")}

    def write(self, src: Path, dst: Path, float_nodes: Sequence[str] = (), only_nodes: Sequence[str] = ()) -> None:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        options: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT, "ActivationSymmetric": False,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
        if self.method != "minmax":
            # Histogram calibrators keep every batch's tensors until they merge them: one batch at
            # a time bounds the memory (and batches of other lengths cannot be stacked anyway).
            # Not CalibMaxIntermediateOutputs: onnxruntime 1.32's MinMax calibrator drops the
            # chunks it clears with it.
            options["CalibStridedMinMax"] = 1
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[self.method]
        reader = None if self.cache.is_file() else _Reader(self.feeds)
        with _quiet_quantizer():
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=self.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_exclude=list(float_nodes), nodes_to_quantize=list(only_nodes),
                            calibrate_method=method, calibration_cache_path=self.cache, extra_options=options)

    def info(self, src: Path, dst: Path, float_nodes: Sequence[str]) -> dict[str, Any]:
        """The manifest's ``quantization`` entry of a graph ``write`` wrote (reads ``dst``)."""
        import onnx

        graph = onnx.load(str(dst), load_external_data=False).graph
        counts = Counter(n.op_type for n in graph.node)
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        integer = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm")
                      and any(i in dequantized for i in n.input))
        return {"scheme": self.scheme, "mode": "static", "format": "QDQ", "per_channel": True,
                "reduce_range": self.reduce_range, "weight_type": "int8", "activation_type": "uint8",
                "activation_symmetric": False, "calibration_method": self.method, "source": src.name,
                "float_nodes": list(float_nodes), "float_weight_ops": float_weight_ops(dst),
                "quantized_ops": {"QuantizeLinear": counts.get("QuantizeLinear", 0),
                                  "DequantizeLinear": counts.get("DequantizeLinear", 0),
                                  "integer_MatMul": integer}}


# --- weight-only INT8 (MatMulNBits) -------------------------------------------------------------

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

    with _quiet_quantizer("onnxruntime.quantization.matmul_nbits_quantizer"):
        model = onnx.load(str(src))
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=bits,
                                              accuracy_level=ACCURACY_LEVEL[compute])
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        external = model.ByteSize() > MAX_PROTOBUF
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

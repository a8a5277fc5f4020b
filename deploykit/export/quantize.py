"""Step 3: INT8 variants with onnxruntime's quantizer.

Dynamic quantization (``model.int8.onnx``) quantizes weights ahead of time, per channel, and
activations on the fly; it runs on the fused graph so that ``Attention`` becomes
``QAttention``. Static QDQ quantization (``model.int8-static.onnx``) calibrates activation
ranges on training rows and runs on the plain graph.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

# Nodes that do integer matrix products after dynamic or static (QDQ) quantization.
QUANTIZED_MATMUL_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                        "QLinearMatMul", "QGemm")


@contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs one INFO line per tensor on the root logger; keep it quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


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


def quantize_static(src: Path, dst: Path, reduce_range: bool,
                    feeds: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Static QDQ INT8 quantization of the plain graph, calibrated on the given feeds.

    Only MatMul/Gemm are quantized: quantizing LayerNorm, Softmax and the embedding adds
    error without speed on CPU.

    Args:
        src: The plain fp32 graph.
        dst: Where to write ``model.int8-static.onnx``.
        reduce_range: Quantize weights to 7 bits (for CPUs without VNNI).
        feeds: Input dicts (numpy arrays by input name) of training rows, one batch each.

    Returns:
        The manifest's ``quantization`` entry.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType)
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    batches = list(feeds)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._items, None)

    with _quiet_quantizer():
        ort_quantize_static(src, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                            calibrate_method=CalibrationMethod.MinMax)
    import onnx

    qdq = Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    info = {"mode": "static", "format": "QDQ", "per_channel": True, "reduce_range": reduce_range,
            "weight_type": "int8", "activation_type": "uint8", "calibration": "minmax",
            "calibration_batches": len(batches), "source": src.name,
            "quantized_ops": {"QuantizeLinear": qdq.get("QuantizeLinear", 0),
                              "DequantizeLinear": qdq.get("DequantizeLinear", 0)}}
    log.info("static-quantized %s -> %s on %d calibration batches", src.name, dst.name, len(batches))
    return info

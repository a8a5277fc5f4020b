"""Step 2: onnxruntime's graph optimizations and transformer fusions (``model.opt.onnx``).

O1 runs only onnxruntime's basic graph rewrites (constant folding, redundant-node removal);
O2 adds the transformer optimizer's fusions, which turn the attention subgraph into the
``Attention``/``MultiHeadAttention`` contrib operator and LayerNorm/residual/GELU chains into
``SkipLayerNormalization``/``BiasGelu``. Operator counts come from the written graph itself,
so what the manifest says is what the file holds.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONTRIB_DOMAIN = "com.microsoft"
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")
# What O2 should produce for an encoder; anything absent is reported as a missing fusion.
EXPECTED_FUSIONS = {"Attention": ATTENTION_OPS,
                    "SkipLayerNormalization": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"),
                    "Gelu": ("BiasGelu", "FastGelu", "Gelu", "GemmFastGelu")}


def fused_ops(path: Path) -> dict[str, int]:
    """Count the onnxruntime contrib (fused) operators of a graph, by type.

    Args:
        path: An ONNX file.

    Returns:
        ``{op_type: count}`` of nodes in the ``com.microsoft`` domain, sorted by name.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node if n.domain == CONTRIB_DOMAIN)
    return dict(sorted(counts.items()))


def missing_fusions(ops: dict[str, int], expected: dict[str, tuple[str, ...]] = EXPECTED_FUSIONS) -> list[str]:
    """The ``expected`` fusions (by default an encoder's: Attention, SkipLayerNormalization, Gelu)
    absent from ``ops``: a fusion is present when any of its operator types is."""
    return [name for name, kinds in expected.items() if not any(ops.get(k) for k in kinds)]


def ort_model_type(model_type: str) -> str:
    """The onnxruntime optimizer's model type for a transformers model type (optimum's map)."""
    from optimum.onnxruntime.utils import ORTConfigManager

    try:
        return ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:
        return "bert"  # every encoder optimum maps is optimized as "bert"; the fusions are pattern-based


def heads_and_hidden(config: Any) -> tuple[int, int]:
    """Attention heads and hidden size of a transformers config (DistilBERT names them differently)."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    return int(heads or 0), int(hidden or 0)


def optimize(src: Path, dst: Path, level: str, config: Any, model_type: str | None = None,
             expected: dict[str, tuple[str, ...]] = EXPECTED_FUSIONS) -> dict[str, Any]:
    """Write an optimized copy of ``src`` to ``dst``.

    Args:
        src: The plain fp32 graph.
        dst: Where to write ``model.opt.onnx``.
        level: ``O1`` (onnxruntime basic optimizations) or ``O2`` (plus transformer fusions).
        config: The model's transformers config (model type, heads, hidden size).
        model_type: The optimizer's model type (default: ``ort_model_type`` of the config's).
        expected: The fusions O2 should produce (``missing_fusions``; a decoder expects fewer).

    Returns:
        ``{"level", "fused_ops", "missing_fusions"}`` for the manifest.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    if level == "O1":
        model = optimize_model(str(src), opt_level=1, only_onnxruntime=True)
    else:
        heads, hidden = heads_and_hidden(config)
        # opt_level=1 lets onnxruntime fold constants first (the shape subgraphs of the
        # attention pattern), then the Python fusions match; higher levels emit
        # hardware-specific nodes that would tie the file to this machine.
        model = optimize_model(str(src), model_type=model_type or ort_model_type(config.model_type),
                               num_heads=heads, hidden_size=hidden, opt_level=1)
    model.save_model_to_file(str(dst))
    ops = fused_ops(dst)
    missing = missing_fusions(ops, expected) if level == "O2" else []
    log.info("optimized %s (%s): fused %s%s", dst.name, level, ops or "nothing",
             f"; missing fusions: {', '.join(missing)}" if missing else "")
    return {"level": level, "fused_ops": ops, "missing_fusions": missing}

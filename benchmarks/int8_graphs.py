"""Which graph static INT8 should quantize: the plain one or the MultiHeadAttention-fused one.

onnxruntime's static quantizer does not quantize the fused ``Attention`` operator (nor
``EmbedLayerNormalization``), so static INT8 of the usual fused graph leaves the Q/K/V
projections float. Two graphs put every weight MatMul within its reach: the plain graph
(``model.onnx``, what export quantizes) and a graph fused with ``MultiHeadAttention``, whose
Q/K/V projections stay plain MatMuls. This script builds static QDQ INT8 (MinMax, the
artifact's calibration rows) of both, with the artifact's float operators kept float when its
INT8 came from the fallback search, scores their agreement with the fp32 graph on validation
rows, and times them side by side with the fused fp32 graph (``model.opt.onnx``): model calls
only, pre-tokenized, the engines interleaved call by call in every round (so load drift hits
all alike), batch 32 over length-sorted held-out rows and batch-1 latency. Read the median
ratios to the fused fp32 graph; on a loaded machine the absolute numbers mean nothing.

Usage:
    python3 benchmarks/int8_graphs.py --checkpoint RUN/checkpoint --artifact ART \
        [--rounds 5] [--threads N] [--out benchmarks/results/int8_graphs]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploykit import checkpoint as ckpt  # noqa: E402
from deploykit.config import ExportConfig  # noqa: E402
from deploykit.export import quantize  # noqa: E402
from deploykit.tasks.classification import int8_schemes, parity  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402
from deploykit.runtime import Runtime  # noqa: E402

log = logging.getLogger("int8_graphs")


def mha_graph(src: Path, dst: Path, config) -> Path:
    """``src`` fused with MultiHeadAttention (Q/K/V projections left as MatMuls), every tensor
    typed by symbolic shape inference: without types the calibrator skips the fused operators'
    outputs and the quantizer fails ("Unable to get valid quantization scale")."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from deploykit.export.optimize import heads_and_hidden, ort_model_type

    options = FusionOptions(ort_model_type(config.model_type))
    options.use_multi_head_attention = True
    heads, hidden = heads_and_hidden(config)
    model = optimize_model(str(src), model_type=ort_model_type(config.model_type), num_heads=heads,
                           hidden_size=hidden, optimization_options=options, opt_level=1)
    onnx.save(SymbolicShapeInference.infer_shapes(model.model, auto_merge=True), str(dst))
    return dst


def timed(runtimes: dict[str, Runtime], texts: list[str], singles: list[str], rounds: int) -> list[dict]:
    """Per round and engine: texts/s at batch 32 (length-sorted) and batch-1 p50 latency."""
    any_runtime = next(iter(runtimes.values()))
    rows = sorted(any_runtime.tokenize(texts), key=lambda r: r.length)
    batches = [rows[i:i + 32] for i in range(0, len(rows), 32)]
    ones = [[r] for r in any_runtime.tokenize(singles)]
    for runtime in runtimes.values():  # warm-up: first calls allocate
        for batch in batches[:3] + ones[:10]:
            runtime.run(batch)
    results = []
    for index in range(rounds):
        spent = {name: 0.0 for name in runtimes}
        latency = {name: [] for name in runtimes}
        for batch in batches:
            for name, runtime in runtimes.items():
                start = time.perf_counter()
                runtime.run(batch)
                spent[name] += time.perf_counter() - start
        for one in ones:
            for name, runtime in runtimes.items():
                start = time.perf_counter()
                runtime.run(one)
                latency[name].append(time.perf_counter() - start)
        results.append({name: {"texts_per_s": len(rows) / spent[name],
                               "p50_ms": 1000 * float(np.median(latency[name]))} for name in runtimes})
        log.info("round %d: %s", index, "  ".join(f"{n} {r['texts_per_s']:.0f}/s {r['p50_ms']:.1f}ms"
                                                  for n, r in results[-1].items()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rows", type=int, default=1024, help="Held-out rows timed at batch 32.")
    parser.add_argument("--latency-rows", type=int, default=200)
    parser.add_argument("--score-rows", type=int, default=1000, help="Validation rows scored for agreement.")
    parser.add_argument("--out", default="benchmarks/results/int8_graphs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    checkpoint, artifact = Path(args.checkpoint), Path(args.artifact)
    manifest = Manifest.verify(artifact)
    int8 = manifest.variants.get("int8")
    q = (int8.quantization or {}) if int8 else {}
    train_cfg = ckpt.train_config(checkpoint)
    calibration = q.get("calibration", {})
    cfg = ExportConfig(checkpoint=str(checkpoint), data=calibration.get("data"),
                       calibration_samples=calibration.get("rows", 512))
    tokenizer, max_length = artifact / "tokenizer.json", manifest.max_length
    float_nodes = list(q.get("float_nodes", [])) if q.get("mode") == "static" else []

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory(prefix="int8-graphs-") as tmp:
        scratch = Path(tmp)
        sources = {"plain": artifact / "model.onnx",
                   "mha": mha_graph(artifact / "model.onnx", scratch / "mha.onnx", AutoConfig.from_pretrained(checkpoint))}
        graphs = {"fused fp32 (opt)": artifact / "model.opt.onnx"}
        for name, src in sources.items():
            feeds = int8_schemes.calibration(cfg, train_cfg, src, tokenizer, max_length)
            nodes = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
            scheme = quantize.Static("minmax", False, feeds.feeds, scratch / f"{name}-calibration.json")
            graphs[f"static {name}, all INT8"] = scratch / f"{name}-all.onnx"
            scheme.write(src, graphs[f"static {name}, all INT8"])
            if float_nodes:
                kept = [n for n in float_nodes if n in nodes]
                label = f"static {name}, {len(kept)} float (the artifact's)"
                graphs[label] = scratch / f"{name}-fallback.onnx"
                scheme.write(src, graphs[label], kept)

        held = parity.load_held_out(replace(cfg, split="validation", max_eval_samples=args.score_rows), train_cfg,
                                    list(manifest.head.labels))
        reference = parity.runtime_logits(Runtime.of_graph(artifact / "model.onnx", tokenizer, max_length),
                                          held.texts, [32], progress=False)
        runtimes = {label: Runtime.of_graph(path, tokenizer, max_length, threads=args.threads, spin=True)
                    for label, path in graphs.items()}
        scores = {}
        for label, runtime in runtimes.items():
            logits = parity.runtime_logits(runtime, held.texts, [32], progress=False)
            scores[label] = {"agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
                             "float_weight_ops": quantize.float_weight_ops(graphs[label]),
                             "mb": graphs[label].stat().st_size / 1e6}
        test = parity.load_held_out(replace(cfg, split="test"), train_cfg, list(manifest.head.labels)).texts
        rounds = timed(runtimes, test[:args.rows], test[args.rows:args.rows + args.latency_rows], args.rounds)
    base = "fused fp32 (opt)"
    summary = {}
    for label in runtimes:
        ratio32 = [r[label]["texts_per_s"] / r[base]["texts_per_s"] for r in rounds]
        ratio1 = [r[base]["p50_ms"] / r[label]["p50_ms"] for r in rounds]
        summary[label] = {**scores[label], "ratio32_median": float(np.median(ratio32)),
                          "ratio32_range": [min(ratio32), max(ratio32)], "ratio1_median": float(np.median(ratio1)),
                          "texts_per_s_median": float(np.median([r[label]["texts_per_s"] for r in rounds])),
                          "p50_ms_median": float(np.median([r[label]["p50_ms"] for r in rounds]))}
    load = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"threads": args.threads, "rounds": rounds, "summary": summary,
                                                    "loadavg_end": load, "validation_rows": len(held.texts)},
                                                   indent=2) + "\n")
    lines = [f"# Static INT8: plain vs MultiHeadAttention-fused graph ({args.threads} threads, {args.rounds} "
             f"rounds, load average at the end {load[0]:.1f})", "",
             "| graph | float-weight operators | MB | agreement with fp32 | texts/s b=32 | x fused fp32 (range) "
             "| p50 ms b=1 | x fused fp32 |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for label, s in summary.items():
        ops = ", ".join(f"{k} {v}" for k, v in s["float_weight_ops"].items()) or "none"
        lines.append(f"| {label} | {ops} | {s['mb']:.1f} | {s['agreement']:.4f} | {s['texts_per_s_median']:.0f} | "
                     f"{s['ratio32_median']:.2f} ({s['ratio32_range'][0]:.2f}-{s['ratio32_range'][1]:.2f}) | "
                     f"{s['p50_ms_median']:.2f} | {s['ratio1_median']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

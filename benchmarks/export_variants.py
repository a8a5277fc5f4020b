"""Side-by-side benchmark of PyTorch eager and the exported ONNX variants on held-out rows.

For PyTorch eager, the plain ONNX graph, the fused graph and the INT8 graph (and, when export
kept operators float, the same scheme's all-INT8 graph): file size, macro-F1 on the whole held-out split,
latency p50/p95/p99 at batch 1, and throughput at batch 32, all measured in one run on the
same machine with the same thread count, so the ratios between rows are what to read.

Timing covers the model call only: every engine gets pre-tokenized inputs (PyTorch from the
checkpoint's tokenizer, ONNX from the artifact's tokenizer.json, which give the same ids).

Usage:
    python3 benchmarks/export_variants.py --checkpoint RUN/checkpoint --artifact ART \
        [--export-if-missing] [--latency-rows 300] [--threads N] [--out benchmarks/results/export_variants]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploykit import checkpoint as ckpt  # noqa: E402
from deploykit.config import ExportConfig  # noqa: E402
from deploykit.tasks.classification import parity  # noqa: E402
from deploykit.manifest import Manifest  # noqa: E402

log = logging.getLogger("export_variants")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def _torch_engine(checkpoint: Path, texts: list[str], max_length: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    model, tokenizer = ckpt.load_model(checkpoint)
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)

    def encode(batch):
        enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in accepted}

    def call(feeds):
        with torch.inference_mode():
            return model(**feeds).logits.numpy()

    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    return encode, call, size


def _onnx_engine(path: Path, tokenizer_file: Path, max_length: int, threads: int):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length)

    def encode(batch):
        enc = tokenizer.encode_batch(batch)
        arrays = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                  "token_type_ids": [e.type_ids for e in enc]}
        return {n: np.asarray(arrays[n], dtype=np.int64) for n in names}

    def call(feeds):
        return sess.run(["logits"], feeds)[0]

    return encode, call, path.stat().st_size


def measure(encode, call, texts: list[str], gold: list[int], num_labels: int, latency_rows: int,
            batch: int = 32) -> dict[str, float]:
    """Latency at batch 1 on the first rows, then throughput and macro-F1 at ``batch`` on all rows."""
    singles = [encode([t]) for t in texts[:latency_rows]]
    for feeds in singles[:10]:  # warm-up: first calls allocate
        call(feeds)
    seconds = []
    for feeds in singles:
        start = time.perf_counter()
        call(feeds)
        seconds.append(time.perf_counter() - start)
    batches = [encode(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    call(batches[0])
    start = time.perf_counter()
    logits = np.concatenate([call(feeds) for feeds in batches])
    elapsed = time.perf_counter() - start
    metrics = parity.classification_metrics(logits, gold, num_labels)
    return {**_percentiles(seconds), "throughput_rows_s": len(texts) / elapsed, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--export-if-missing", action="store_true",
                        help="Run 'deploykit export' into --artifact first if it has no manifest.")
    parser.add_argument("--data", default=None, help="Data source (default: the checkpoint's).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--latency-rows", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="benchmarks/results/export_variants")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    checkpoint, artifact = Path(args.checkpoint), Path(args.artifact)
    if not (artifact / "manifest.json").is_file():
        if not args.export_if_missing:
            sys.exit(f"{artifact} is not an artifact; export it first or pass --export-if-missing")
        from deploykit import export

        export.run(ExportConfig(checkpoint=str(checkpoint), out=str(artifact), data=args.data, split=args.split))
    manifest = Manifest.read(artifact)
    cfg = ExportConfig(checkpoint=str(checkpoint), data=args.data, split=args.split)
    held = parity.load_held_out(cfg, ckpt.train_config(checkpoint), list(manifest.head.labels))
    max_length, k = manifest.max_length, len(manifest.head.labels)
    log.info("%d %s rows, %d threads", len(held.texts), held.split, args.threads)

    engines = [("pytorch eager", lambda: _torch_engine(checkpoint, held.texts, max_length, args.threads))]
    int8 = manifest.variants["int8"].quantization if "int8" in manifest.variants else None
    scheme = (int8 or {}).get("scheme") or (int8 or {}).get("mode", "")
    for name, label in (("fp32", "onnx fp32"), ("opt", "onnx fused (opt)"), ("int8", f"onnx int8 {scheme}")):
        if name in manifest.variants:
            file = artifact / manifest.variants[name].file
            engines.append((label, lambda f=file: _onnx_engine(f, artifact / "tokenizer.json", max_length,
                                                                args.threads)))
    if int8 and int8.get("float_nodes"):
        # What the INT8 fallback costs: the same scheme's all-INT8 graph, measured alongside.
        from deploykit.export import quantize
        from deploykit.tasks.classification import int8_schemes

        source = artifact / int8["source"]
        scratch = tempfile.TemporaryDirectory(prefix="export-variants-")  # removed when main() returns
        every = Path(scratch.name) / "model.int8-all.onnx"
        if int8["mode"] == "dynamic":
            quantize.write_dynamic(source, every, int8["reduce_range"])
        else:  # recalibrated on the same training rows (the manifest's record)
            calib_cfg = replace(cfg, data=int8["calibration"]["data"], calibration_samples=int8["calibration"]["rows"])
            feeds = int8_schemes.calibration(calib_cfg, ckpt.train_config(checkpoint), source,
                                             artifact / "tokenizer.json", max_length).feeds
            quantize.Static(int8["calibration_method"], int8["reduce_range"], feeds,
                            Path(scratch.name) / "calibration.json").write(source, every)
        engines.append(("onnx int8, every operator (--int8-fallback off)",
                        lambda: _onnx_engine(every, artifact / "tokenizer.json", max_length, args.threads)))
    rows = []
    for label, make in engines:
        encode, call, size = make()
        log.info("measuring %s", label)
        rows.append({"engine": label, "size_mb": size / 2**20,
                     **measure(encode, call, held.texts, held.labels, k, args.latency_rows)})
    base = rows[0]
    for row in rows:
        row["speedup_b1_p50"] = base["p50_ms"] / row["p50_ms"]
        row["speedup_b32"] = row["throughput_rows_s"] / base["throughput_rows_s"]

    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    env = {"cpu": cpu, "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "rows": len(held.texts), "split": held.split, "data": held.source, "latency_rows": args.latency_rows,
           "checkpoint": str(checkpoint)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    lines = [f"# Export variants: {len(held.texts)} held-out rows ({held.split} of {held.source})", "",
             f"CPU: {cpu}; {args.threads} threads; torch {torch.__version__}; onnxruntime "
             f"{onnxruntime.__version__}. Batch-1 latency over the first {args.latency_rows} rows "
             "(model call only, pre-tokenized); throughput at batch 32 over all rows in their order.", "",
             "| engine | size (MB) | macro-F1 | accuracy | p50 ms (b=1) | p95 ms | p99 ms | rows/s (b=32) "
             "| speed-up b=1 | speed-up b=32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['size_mb']:.1f} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput_rows_s']:.0f} | "
                     f"{r['speedup_b1_p50']:.2f}x | {r['speedup_b32']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""deploykit bench offline on a text-generation artifact: a small real run of every engine.

No timing thresholds: the assertions check the structure and the sanity of the numbers."""

from __future__ import annotations

import json

from deploykit.manifest import Manifest
from test_bench import deploykit


def test_offline_generation_times_every_engine(generation_artifacts, tmp_path):
    _, artifact = generation_artifacts["llama"]  # provenance names its checkpoint: PyTorch runs too
    out = tmp_path / "bench"
    proc = deploykit("bench", "offline", str(artifact), "--variants", "fp32,opt", "--generation-batch-sizes", "1,3",
                     "--prompt-tokens", "12", "--new-tokens", "5", "--warmup", "1", "--min-iters", "2",
                     "--min-duration", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "offline-generation" and results["new_tokens"] == 5
    default = Manifest.read(artifact).default_variant  # what Optimum is timed on
    engines = {"pytorch", f"optimum:{default}", "runtime:fp32", "runtime:opt"}
    assert {(c["engine"], c["batch_size"]) for c in results["cells"]} == {(e, b) for e in engines for b in (1, 3)}
    for c in results["cells"]:
        assert c["iters"] >= 2 and c["ttft_p50_ms"] > 0 and 0 < c["itl_p50_ms"] <= c["itl_p95_ms"]
        # tokens/s counts every sequence's new tokens over the whole call
        per_call = c["ttft_p50_ms"] + 4 * c["itl_mean_ms"]
        assert 0.2 < c["tokens_per_s"] / (c["batch_size"] * 5 / per_call * 1000) < 5
        assert (c["tokens_per_s_vs_pytorch"] == 1.0) == (c["engine"] == "pytorch")
    table = (out / "results.md").read_text()
    assert "| 3 | runtime:opt |" in table and "TTFT p50 ms" in table


def test_optimum_quantized_is_refused_for_a_generation_artifact(generation_artifacts, tmp_path):
    """Optimum's INT8 engine quantizes a classifier: on a generation artifact it is exit 2 naming
    the engines that apply, before anything starts."""
    _, artifact = generation_artifacts["llama"]
    proc = deploykit("bench", "offline", str(artifact), "--engines", "optimum-quantized", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "use pytorch, optimum and runtime" in proc.stderr
    assert not (tmp_path / "b" / "results.json").exists()

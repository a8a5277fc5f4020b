"""deploykit bench offline / online: small real runs on a tiny model and a locally started service.

No timing thresholds: the assertions check the structure and the sanity of the numbers
(positive rates, ordered percentiles, counts that add up, ratios consistent with the rates).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.bench.online import Recorder, summarize
from deploykit.bench.stats import summarize_latencies

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def deploykit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_percentiles(row: dict) -> None:
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]


def assert_outputs(out: Path, plots: list[str]) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["plots"] == plots
    for plot in plots:
        assert (out / plot).read_bytes()[:8] == PNG
        assert f"]({plot})" in (out / "results.md").read_text()
    machine = results["machine"]
    assert machine["usable_cpus"] >= 1 and "avx512_vnni" in machine["simd_flags"]
    return results


# --- offline ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def offline(serve_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "offline"
    # The manifest's provenance names the tiny checkpoint, so PyTorch eager runs without --checkpoint.
    proc = deploykit("bench", "offline", str(serve_artifact), "--data", "tweets", "--samples", "48",
                     "--engines", "pytorch,optimum,optimum-quantized,runtime", "--optimum-quantized-rows", "20",
                     "--variants", "fp32,opt", "--batch-sizes", "1,8", "--synthetic-lengths", "40",
                     "--synthetic-batch-sizes", "4", "--warmup", "1", "--min-iters", "3",
                     "--min-duration", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_offline_runs_every_engine_on_every_cell(offline):
    results = assert_outputs(offline, ["offline_throughput.png", "offline_latency.png"])
    engines = ["pytorch", "optimum:int8", "optimum-quantized", "runtime:fp32", "runtime:opt"]
    assert sorted(results["engines"]) == sorted(engines)
    expected = {(s, b) for s, b in [("data", 1), ("data", 8), ("synthetic-40", 4)]}
    cells = results["cells"]
    assert len(cells) == len(expected) * len(engines)
    for engine in engines:
        assert {(c["input"], c["batch_size"]) for c in cells if c["engine"] == engine} == expected
    for cell in cells:
        assert_percentiles(cell)
        assert cell["iters"] >= 3 and cell["texts_per_s"] > 0 and cell["tokens_per_s"] > 0
        # Throughput is calls x batch / wall time, and the wall time covers every call.
        assert cell["wall_s"] >= cell["iters"] * cell["min_ms"] / 1e3
        base = next(c for c in cells if c["engine"] == "pytorch" and c["input"] == cell["input"]
                    and c["batch_size"] == cell["batch_size"])
        assert cell["throughput_vs_pytorch"] == pytest.approx(cell["texts_per_s"] / base["texts_per_s"])
    for engine, info in results["engines"].items():
        assert info["peak_rss_mb"] >= info["rss_after_load_mb"] > 0, engine
    # Every engine truncates at the longest synthetic length; the synthetic texts are exact.
    assert results["max_length"] == 40
    assert results["inputs"]["synthetic-40"]["mean_tokens"] == 40
    markdown = (offline / "results.md").read_text()
    for engine in engines:
        assert f"| {engine} |" in markdown


def test_offline_engines_alternate(offline):
    cells = json.loads((offline / "results.json").read_text())["cells"]
    firsts = [cells[i]["engine"] for i in range(0, len(cells), 5)]
    assert len(set(firsts)) == len(firsts)  # a different engine opens each cell


def test_optimum_quantized_is_the_better_of_optimums_two_int8_models(offline, serve_artifact):
    """Optimum's dynamic and static avx512_vnni INT8 of the checkpoint, the static one calibrated
    on the training rows deploykit calibrated on; the engine runs the one that agrees more."""
    import onnx

    from deploykit.manifest import Manifest

    choice = json.loads((offline / "optimum-quantized" / "choice.json").read_text())
    candidates = choice["candidates"]
    assert set(candidates) == {"dynamic", "static"}
    best = max(candidates, key=lambda c: (candidates[c]["agreement"], c == "dynamic"))
    assert choice["config"] == best and choice["folder"] == candidates[best]["folder"]
    calibration = Manifest.read(serve_artifact).variants["int8"].quantization["calibration"]
    assert choice["calibration"]["rows_sha256"] == calibration["rows_sha256"]
    assert choice["calibration"]["rows"] == calibration["rows"] and choice["rows"]["split"] == "validation"
    ops = {c: {n.op_type for n in onnx.load(str(Path(v["folder"]) / "model_quantized.onnx")).graph.node}
           for c, v in candidates.items()}
    assert "MatMulInteger" in ops["dynamic"] and "DynamicQuantizeLinear" in ops["dynamic"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["static"] and "DynamicQuantizeLinear" not in ops["static"]
    spec = json.loads((offline / "results.json").read_text())["specs"]["optimum-quantized"]
    assert spec["kind"] == "optimum" and spec["variant"] == best and spec["file"] == "model_quantized.onnx"


def test_synthetic_texts_have_the_exact_token_length(serve_artifact):
    from tokenizers import Tokenizer

    from deploykit.bench.inputs import sample_texts, synthetic_texts

    tokenizer = Tokenizer.from_file(str(serve_artifact / "tokenizer.json"))
    tokenizer.no_truncation()
    texts = synthetic_texts(tokenizer, sample_texts("tweets", "text", 20, 0), 64, 6)
    assert len(set(texts)) == 6
    assert [len(tokenizer.encode(t).ids) for t in texts] == [64] * 6


def test_offline_bad_input_exit_codes(serve_artifact, tmp_path):
    proc = deploykit("bench", "offline", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "manifest.json" in proc.stderr
    proc = deploykit("bench", "offline", str(serve_artifact), "--engines", "pytorch,tensorrt")
    assert proc.returncode == 2 and "--engines" in proc.stderr
    proc = deploykit("bench", "offline", str(serve_artifact), "--variants", "nope", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "variant 'nope'" in proc.stderr
    assert not (tmp_path / "o" / "results.json").exists()


# --- online -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(serve_artifact, tmp_path_factory):
    from test_serve import start_server, stop_server

    proc, url = start_server(serve_artifact, tmp_path_factory.mktemp("bench-server"))
    yield url
    stop_server(proc)


def test_online_closed_open_and_single_levels(service, tmp_path):
    out = tmp_path / "online"
    proc = deploykit("bench", "online", "--url", service, "--concurrency", "4,1", "--rate", "30",
                     "--duration", "1.5", "--warmup", "0.3", "--single-requests", "5",
                     "--texts-per-request", "2", "--samples", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = assert_outputs(out, ["online.png"])
    labels = [lv["label"] for lv in results["levels"]]
    # Single requests first, the open loop, closed levels ascending, single requests right after the heaviest.
    assert labels == ["single, before load", "open loop 30 req/s", "concurrency 1", "concurrency 4",
                      "single, right after concurrency 4"]
    for level in results["levels"]:
        assert level["requests"] == level["ok"] + sum(level["errors"].values())
        assert level["errors"] == {} and level["ok"] > 0
        assert_percentiles(level)
        per = 1 if level["mode"] == "single" else 2
        assert level["texts_per_s"] == pytest.approx(level["requests_per_s"] * per)
        assert level["requests_per_s"] == pytest.approx(level["ok"] / level["window_s"])
    assert results["levels"][0]["requests"] == results["levels"][-1]["requests"] == 5
    assert "| concurrency 4 |" in (out / "results.md").read_text()


def test_online_v2_protocol(service, serve_artifact, tmp_path):
    name = json.loads((serve_artifact / "manifest.json").read_text())["name"]
    proc = deploykit("bench", "online", "--url", service, "--protocol", "v2", "--model", name,
                     "--concurrency", "2", "--duration", "1", "--warmup", "0", "--single-requests", "0",
                     "--samples", "20", "--out", str(tmp_path / "v2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (level,) = json.loads((tmp_path / "v2" / "results.json").read_text())["levels"]
    assert level["ok"] > 0 and level["errors"] == {}
    # A wrong model name is caught by the probe request, before any load.
    proc = deploykit("bench", "online", "--url", service, "--protocol", "v2", "--model", "nope",
                     "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "--model" in proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("url", ["http://10.20.30.40:3000", "http://[2001:db8::1]:3000"])
def test_online_refuses_non_loopback_targets(url, tmp_path):
    proc = deploykit("bench", "online", "--url", url, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_online_nothing_listening_is_a_clear_error(tmp_path):
    from deploykit.serve.launch import free_port

    proc = deploykit("bench", "online", "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "nothing answers" in proc.stderr


# --- units ------------------------------------------------------------------------------------

def test_summaries_count_errors_and_order_percentiles():
    recorder = Recorder()
    for i, status in enumerate(["ok"] * 7 + ["503", "503", "timeout"]):
        recorder.add(float(i), 0.01 * (i + 1), status)
    level = summarize("x", "closed", recorder, 2.0, 3, concurrency=4)
    assert (level["requests"], level["ok"], level["errors"]) == (10, 7, {"503": 2, "timeout": 1})
    assert level["requests_per_s"] == 3.5 and level["texts_per_s"] == 10.5
    assert level["p50_ms"] == pytest.approx(40.0) and level["max_ms"] == pytest.approx(70.0)
    stats = summarize_latencies([0.001 * i for i in range(1, 101)])
    assert stats["p50_ms"] < stats["p95_ms"] < stats["p99_ms"] < stats["max_ms"] == pytest.approx(100)


# --- the runtime's padding-aware batch plan (the fix the offline numbers called for) ---------

def test_runtime_plan_is_the_cheapest_split_within_the_budgets(serve_artifact):
    import itertools

    from deploykit.runtime import Encoded, Runtime

    runtime = Runtime(serve_artifact, "fp32", max_batch_size=8, max_batch_tokens=400)
    # Cutting by the budgets alone would pad 8 rows to 40 tokens (cost 394 against 233).
    lengths = [40, 5, 6, 38, 7, 5, 36, 6, 5, 7]
    rows = [Encoded([1] * n, [0] * n, False) for n in lengths]
    plan = list(runtime.plan(rows))
    assert sorted(i for b in plan for i in b) == list(range(len(rows)))

    def cost(groups):
        return sum(len(g) * max(lengths[i] for i in g) + runtime.CALL_COST_TOKENS for g in groups)

    for batch in plan:
        widths = [lengths[i] for i in batch]
        assert widths == sorted(widths, reverse=True)  # longest first
        assert len(batch) <= 8 and len(batch) * widths[0] <= 400
    # Brute force over every split of the sorted rows into consecutive groups within the budgets.
    order = sorted(range(len(rows)), key=lambda i: lengths[i], reverse=True)
    best = min(cost(groups) for cuts in itertools.product([0, 1], repeat=len(rows) - 1)
               for groups in [_split(order, cuts)]
               if all(len(g) <= 8 and len(g) * lengths[g[0]] <= 400 for g in groups))
    assert cost(plan) == best
    # The long rows do not drag the short ones into padding: no group mixes 36-40 with 5-7.
    assert all(max(lengths[i] for i in b) < 20 or min(lengths[i] for i in b) > 20 for b in plan)


def _split(order: list[int], cuts: tuple[int, ...]) -> list[list[int]]:
    groups, current = [], [order[0]]
    for index, cut in zip(order[1:], cuts):
        if cut:
            groups.append(current)
            current = []
        current.append(index)
    return groups + [current]


def test_an_engine_process_reports_its_own_peak_memory_not_its_parents():
    """bench offline's parent may hold PyTorch (it builds optimum-quantized) when it starts the
    engine processes: each must report its own peak RSS. getrusage's ru_maxrss carries the
    parent's peak across fork and exec, which made every engine report the same 1,469 MiB."""
    from deploykit.bench.engines import peak_rss_mb

    ballast = bytearray(400 * 1024 * 1024)  # 400 MiB, every page touched
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    parent = peak_rss_mb()
    child = float(subprocess.run([sys.executable, "-c", "from deploykit.bench.engines import peak_rss_mb; "
                                  "print(peak_rss_mb())"], capture_output=True, text=True, check=True).stdout)
    assert parent > 400 and child < parent - 300, (parent, child)
    del ballast

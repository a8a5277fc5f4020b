"""`deploykit demo`: the whole pipeline end to end (--quick), and its failure handling."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from deploykit.errors import BadInputError

ROOT = Path(__file__).parents[1]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}


# CI runs the README's first command (`deploykit demo --quick` on this checkout, in its own new
# venv) just before the suite, and names its output folder and its log (stdout and stderr as one
# stream) here: the test then checks that run instead of repeating the same command (45 s).
CI_DEMO_OUT, CI_DEMO_LOG = "DEPLOYKIT_CI_DEMO_OUT", "DEPLOYKIT_CI_DEMO_LOG"


@dataclass
class DemoRun:
    """What a `deploykit demo --quick` run printed: its stdout and its stderr, or, for CI's run, both
    as one stream in each (``merged``)."""

    stdout: str
    stderr: str
    merged: bool = False


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One real `deploykit demo --quick` run (train, export, bento, service, Triton, k8s)."""
    if os.environ.get(CI_DEMO_OUT) and os.environ.get(CI_DEMO_LOG):
        log = Path(os.environ[CI_DEMO_LOG]).read_text()
        return Path(os.environ[CI_DEMO_OUT]), DemoRun(log, log, merged=True)
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "demo", "--quick", "--out", str(out)],
                          cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"demo failed:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    return out, DemoRun(proc.stdout, proc.stderr)


@pytest.mark.slow
def test_quick_demo_writes_every_stage_and_one_summary(quick_demo):
    out, proc = quick_demo
    for rel in ("data/tweets-sample.jsonl", "run/checkpoint/model.safetensors", "run/metrics.jsonl",
                "eval/metrics.json", "eval/report.md", "artifact/manifest.json", "artifact/model.onnx",
                "artifact/model.opt.onnx", "artifact/model.int8.onnx", "k8s/kustomization.yaml",
                "logs/demo.log", "logs/serve.log", "summary.md", "summary.json"):
        assert (out / rel).is_file(), rel
    assert (out / "triton_repo" / "sentiment" / "config.pbtxt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["mode"] == "quick"
    assert list(summary["stages"]) == ["baseline", "train", "evaluate", "export", "offline", "build",
                                       "serve", "classify", "online", "stop", "triton", "k8s"]

    # held-out metrics of PyTorch, fused and INT8 on the same test rows; sizes; parity
    export = summary["export"]
    n = summary["data"]["test_rows"]
    assert summary["evaluate"]["n"] == export["held_out_rows"] == n
    assert summary["evaluate"]["macro_f1"] == pytest.approx(export["reference_metrics"]["macro_f1"])
    assert set(export["variant_facts"]) == {"fp32", "opt", "int8"}
    assert export["variant_facts"]["opt"]["fused_ops"].get("Attention", 0) > 0
    # Static INT8: int8 weights for every MatMul; the embedding tables (a third of MiniLM) stay float.
    assert export["variant_facts"]["int8"]["bytes"] < export["variant_facts"]["fp32"]["bytes"] * 0.75
    assert export["variant_facts"]["opt"]["parity"]["max_abs_diff"] < 1e-4
    assert 0 <= summary["baseline"]["test"]["macro_f1"] <= 1
    beats = summary["evaluate"]["macro_f1"] > summary["baseline"]["test"]["macro_f1"]
    assert summary["beats_baseline"] == beats

    # the service answered the same on /classify, v2 and in-process, with the default variant
    service = summary["service"]
    assert service["variant"] == export["default_variant"]
    assert len(service["rows"]) == 6
    for row in service["rows"]:
        assert row["classify"] == row["v2"] == row["in_process"] in summary["data"]["labels"]
    levels = summary["online"]["levels"]
    assert [level["label"] for level in levels][1] == "concurrency 4"
    assert all(level["ok"] > 0 and not level["errors"] for level in levels)
    assert (out / "bench-online" / "results.md").is_file()
    engines = summary["offline"]["engines"]
    assert "pytorch" in engines and engines["pytorch"]["throughput_ratio"] == pytest.approx(1.0)
    # the service was stopped: nothing listens on its port any more
    port = urlparse(service["url"]).port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0

    # the same summary on stdout and in summary.md, with paths and next commands that parse
    text = (out / "summary.md").read_text()
    if proc.merged:
        assert text.strip() in proc.stdout
    else:
        assert proc.stdout.strip() == text.strip()
    for heading in ("## Held-out quality", "## Parity", "## Speed", "## The service answered", "## Next"):
        assert heading in text
    assert f"variant **{service['variant']}**" in text
    assert str(out / "artifact") in text and summary["bento"] in text
    from deploykit.cli import build_parser

    commands = summary["next_commands"]
    assert commands[0].startswith("deploykit serve ") and "deploykit containerize " in commands[1]
    assert commands[2] == f"kubectl apply -k {out / 'k8s'}"
    build_parser().parse_args(commands[0].split()[1:])
    build_parser().parse_args(commands[1].split("deploykit ", 1)[1].split())
    # the stages' own output went to the log, the display to stderr
    assert "▶ train" in proc.stderr and "✓ summary" in proc.stderr
    assert "demo stage" not in proc.stderr


def test_refuses_an_earlier_demo_without_overwrite(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "deploykit", "demo", "--out", str(out)], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and (out / "summary.json").read_text() == "{}"


def test_a_failed_stage_stops_the_demo_and_keeps_earlier_output(tmp_path, monkeypatch):
    """The train stage fails: exit code of its error, named stage, baseline's output kept."""
    from deploykit import demo, train
    from deploykit.config import DemoConfig

    def broken(cfg):
        raise BadInputError("no model here; set --model")

    monkeypatch.setattr(train, "run", broken)
    out = tmp_path / "demo"
    with pytest.raises(demo.StageFailed, match="demo stage 'train' failed: no model here") as info:
        demo.run(DemoConfig(out=str(out), quick=True))
    assert info.value.exit_code == 2
    assert (out / "data" / "tweets-sample.jsonl").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == "train"
    assert list(summary["stages"]) == ["baseline", "train"]
    assert "_texts" not in summary
    assert "BadInputError: no model here" in (out / "logs" / "demo.log").read_text()

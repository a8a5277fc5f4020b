"""`deploykit predict`, `deploykit build` and `deploykit serve`'s refusals, through the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploykit.manifest import Manifest
from deploykit.runtime import Runtime
from test_runtime import mark_unservable
from test_serve import post_json, start_server, stop_server

ROOT = Path(__file__).parents[1]
TEXTS = ["I love it", "so bad", "plain table", "what a day " * 20, "fine"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def write_inputs(folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {"csv": folder / "in.csv", "jsonl": folder / "in.jsonl", "json": folder / "in.json",
             "parquet": folder / "in.parquet"}
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "body"])
        writer.writerows(enumerate(TEXTS))
    files["jsonl"].write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    files["json"].write_text(json.dumps([{"body": t} for t in TEXTS]))
    pq.write_table(pa.table({"body": TEXTS}), files["parquet"])
    return files


def test_predict_scores_every_format_in_input_order(serve_artifact, tmp_path):
    expected = Runtime(serve_artifact, "fp32").predict(TEXTS)  # fp32: batch-independent scores
    for kind, path in write_inputs(tmp_path).items():
        out = tmp_path / f"{kind}.jsonl"
        result = cli("predict", serve_artifact, "--data", path, "--text-column", "body", "--out", out,
                     "--chunk-size", "2", "--max-batch-size", "2", "--variant", "fp32")
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["row"] for r in rows] == list(range(len(TEXTS)))
        assert [r["label"] for r in rows] == [e["label"] for e in expected], kind
        assert [r["truncated"] for r in rows] == [False, False, False, True, False]


def test_predict_refuses_a_missing_column_and_writes_nothing(serve_artifact, tmp_path):
    files = write_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    result = cli("predict", serve_artifact, "--data", files["csv"], "--out", out)
    assert result.returncode == 2
    assert "row 1 of" in result.stderr and "'text'" in result.stderr and "--text-column" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))
    assert cli("predict", serve_artifact, "--data", tmp_path / "x.xlsx").returncode == 2


def test_serve_refuses_a_tampered_artifact_before_starting(serve_artifact, tmp_path):
    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    (art / "tokenizer.json").write_text("{}")
    result = cli("serve", art, "--port", "1")
    assert result.returncode == 4 and "tokenizer.json" in result.stderr
    shutil.copy(serve_artifact / "tokenizer.json", art / "tokenizer.json")
    mark_unservable(art, "int8")
    result = cli("serve", art, "--variant", "int8")
    assert result.returncode == 2 and "not servable" in result.stderr


@pytest.mark.slow
def test_build_makes_a_bento_without_torch(serve_artifact, tmp_path):
    home = tmp_path / "bentoml"
    # `pip install -e .` leaves its own *.egg-info in the checkout; the build must add nothing.
    leftovers_before = {p: p.stat().st_mtime for p in [*ROOT.glob("build"), *ROOT.glob("*.egg-info")]}
    result = cli("build", serve_artifact, "--bentoml-home", home, "--tag", "deploykit-test:v1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "deploykit-test:v1"
    bento = home / "bentos" / "deploykit-test" / "v1"
    requirements = (bento / "env/python/requirements.txt").read_text().lower()
    assert "onnxruntime" in requirements and "tokenizers" in requirements
    for heavy in ("torch", "transformers", "datasets"):
        assert heavy not in requirements
    # deploykit goes in as the bento's own source (no python.wheels: BentoML 1.4's v2 layout).
    assert (bento / "src/deploykit/serve/service.py").is_file()
    assert not list(bento.glob("env/python/wheels/*.whl"))
    assert yaml.safe_load((bento / "bento.yaml").read_text())["image"]  # v2, no v1 fallback
    packed = bento / "src/artifact"
    manifest = Manifest.verify(packed)
    default = Manifest.read(serve_artifact).default_variant
    assert list(manifest.variants) == [default] and manifest.default_variant == default
    assert sorted(manifest.files) == sorted(p.name for p in packed.iterdir() if p.name != "manifest.json")
    assert sum(name.endswith(".onnx") for name in manifest.files) == 1
    assert {p: p.stat().st_mtime for p in [*ROOT.glob("build"), *ROOT.glob("*.egg-info")]} == leftovers_before
    # The bento serves its packed artifact with its packed deploykit source.
    proc, url = start_server(None, tmp_path, argv=[sys.executable, "-m", "bentoml", "serve",
                                                   "deploykit-test:v1", "--host", "127.0.0.1"],
                             env={"BENTOML_HOME": str(home), "DEPLOYKIT_ARTIFACT": ""})
    try:
        status, results = post_json(url + "/classify", {"texts": TEXTS})
    finally:
        stop_server(proc)
    assert status == 200
    assert [r["label"] for r in results] == [r["label"] for r in Runtime(packed).predict(TEXTS)]


def test_serve_settings_layer_environment_under_file_and_flags(serve_artifact, tmp_path, monkeypatch):
    """DEPLOYKIT_* variables (what containers set) apply unless the YAML file or a flag says otherwise."""
    from deploykit import cli
    from deploykit.config import ServeConfig
    from deploykit.serve import settings

    monkeypatch.setenv("DEPLOYKIT_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("DEPLOYKIT_MAX_LATENCY_MS", "3")
    base = settings.env_values()
    args = cli.build_parser().parse_args(["serve", str(serve_artifact)])
    cfg = cli.build_config(ServeConfig, args, base=base)
    assert (cfg.max_batch_size, cfg.max_latency_ms) == (7, 3)
    (tmp_path / "serve.yaml").write_text("max_latency_ms: 9\n")
    args = cli.build_parser().parse_args(["serve", str(serve_artifact), "--config", str(tmp_path / "serve.yaml"),
                                          "--max-batch-size", "5"])
    cfg = cli.build_config(ServeConfig, args, base=base)
    assert (cfg.max_batch_size, cfg.max_latency_ms) == (5, 9)

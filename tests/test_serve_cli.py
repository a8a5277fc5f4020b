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


def _lie(art: Path, **fields) -> None:
    """Edit manifest.json by hand (it is not hashed: what it claims is checked against the files)."""
    doc = json.loads((art / "manifest.json").read_text())
    doc.update(fields)
    (art / "manifest.json").write_text(json.dumps(doc))


LIES = [
    ("labels swapped", lambda art, doc: _lie(art, labels=[doc["labels"][1], doc["labels"][0], *doc["labels"][2:]]),
     "'labels'"),
    ("two labels for three outputs", lambda art, doc: _lie(art, labels=doc["labels"][:2]), "'labels'"),
    ("inputs without token_type_ids", lambda art, doc: _lie(art, inputs=["input_ids", "attention_mask"]), "'inputs'"),
    ("max_length not an integer", lambda art, doc: _lie(art, max_length="32"), "'max_length'"),
    ("max_length beyond the positions", lambda art, doc: _lie(art, max_length=4096), "'max_length'"),
    ("another output name", lambda art, doc: _lie(art, output="probs"), "'output'"),
    ("a string for the variants", lambda art, doc: _lie(art, variants="int8"), "'variants'"),
    # (an unlisted file is an integrity failure, exit 4, like a tampered one)
    ("config.json not listed", lambda art, doc: _lie(art, files={k: v for k, v in doc["files"].items()
                                                                  if k != "config.json"}), "config.json"),
    ("nested 100k deep", lambda art, doc: (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
     "manifest.json"),
]


@pytest.mark.parametrize("name,lie,field", LIES, ids=[lie[0] for lie in LIES])
def test_serve_refuses_a_manifest_that_lies_with_exit_2_naming_the_field(serve_artifact, tmp_path, name, lie, field):
    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    lie(art, json.loads((art / "manifest.json").read_text()))
    result = cli("serve", art, "--port", "1", "--variant", "opt")
    assert result.returncode == (4 if name == "config.json not listed" else 2), result.stderr[-2000:]
    assert field in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_the_graph_is_probed_at_max_length(serve_artifact, tmp_path):
    """A max_length the model cannot take is refused before serving even when config.json
    does not say how many positions the model has."""
    from dataclasses import replace

    from deploykit.errors import BadInputError
    from deploykit.manifest import hash_files

    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    config = json.loads((art / "config.json").read_text())
    del config["max_position_embeddings"]
    (art / "config.json").write_text(json.dumps(config))
    manifest = Manifest.read(art)
    replace(manifest, files=hash_files(art), max_length=600).write(art)
    for variant in ("fp32", "opt", "int8"):
        with pytest.raises(BadInputError, match="fails on a row of 'max_length' 600 tokens"):
            Runtime(art, variant)


def test_a_worker_that_cannot_load_stops_the_server_instead_of_respawning(serve_artifact, tmp_path):
    """`bentoml serve` (what the container runs) on a lying manifest: the worker logs why once
    and the whole server exits, instead of its worker being started again and again."""
    import time

    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    _lie(art, inputs=["input_ids", "attention_mask"])
    from deploykit.serve.launch import free_port

    env = {**os.environ, "DEPLOYKIT_ARTIFACT": str(art), "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bentoml", "serve", "deploykit.serve.service:Classifier",
                             "--host", "127.0.0.1", "--port", str(free_port()), "--working-dir", str(ROOT)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = result.stdout + result.stderr
    assert time.monotonic() - start < 120
    assert log.count("cannot serve:") >= 1 and "'inputs'" in log
    assert log.count("Starting production") == 1 and log.count("initialized") == 0


PREDICT_REFUSALS = [
    ("latin1.csv", "text\ncaf\xe9 au lait\n".encode("latin-1"), "not UTF-8"),
    ("binary.csv", b"text\nfine\n\x00\x9f\x92\x96\xff" * 20, "line 3"),
    ("huge.csv", b'text\n"' + b"x" * 140_000 + b'"\n', "over 131072 characters"),
    ("unclosed.csv", b'text\n"never closed ' + b"y" * 140_000, "row"),
    ("empty.csv", b"", "no rows"),
    ("header_only.csv", b"text\n", "no rows"),
    ("empty.jsonl", b"\n\n", "no rows"),
    ("blank.csv", b"text\nfine\n   \nalso fine\n", "row 2 of"),
    ("blank.jsonl", b'{"text": "ok"}\n{"text": ""}\n', "blank"),
    ("surrogate.jsonl", b'{"text": "\\ud800"}\n', "not Unicode"),
    ("latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), "line 1"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize("name,content,message", PREDICT_REFUSALS, ids=[p[0] for p in PREDICT_REFUSALS])
def test_predict_refuses_bad_files_with_exit_2_and_leaves_nothing(serve_artifact, tmp_path, name, content, message):
    data = tmp_path / name
    data.write_bytes(content)
    out = tmp_path / "out" / "predictions.jsonl"
    result = cli("predict", serve_artifact, "--data", data, "--out", out, "--chunk-size", "1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not list(out.parent.glob("*"))


def test_predict_removes_its_temporary_file_on_sigterm(serve_artifact, tmp_path):
    import signal
    import time

    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"text": f"text number {i} " + "word " * (i % 20)}) + "\n"
                            for i in range(200_000)))
    out = tmp_path / "out" / "predictions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "deploykit", "predict", str(serve_artifact), "--data", str(data),
                             "--out", str(out), "--chunk-size", "64"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".predictions.jsonl.*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        assert list(out.parent.glob(".predictions.jsonl.*")), "predict never started writing"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not out.exists() and not list(out.parent.glob("*"))

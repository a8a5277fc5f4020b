"""The base install serves without torch, and a missing extra gets help, not a traceback.

deploykit is installed (not editable, as a user's ``pip install`` from a checkout would) into a
new virtual environment with only its base dependencies; pip's download cache makes this cost
a minute rather than a download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("base-install")
    # A copy of the sources: pip builds a local project in place (build/, *.egg-info).
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "deploykit", src / "deploykit", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def deploykit(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", BENTOML_DO_NOT_TRACK="True")
    return subprocess.run([str(venv / "bin" / "deploykit"), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=cwd or venv.parent)


def installed(venv: Path, name: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([str(venv / "bin" / "python"), "-c", code]).returncode == 0


def test_base_install_has_no_training_stack(base_venv):
    assert installed(base_venv, "onnxruntime") and installed(base_venv, "bentoml")
    for heavy in ("torch", "transformers", "datasets", "sklearn", "tritonclient"):
        assert not installed(base_venv, heavy), heavy


@pytest.mark.parametrize("command", ["serve", "predict", "triton", "k8s", "build", "train", "demo"])
def test_every_command_prints_its_help_without_torch(base_venv, command):
    proc = deploykit(base_venv, command, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config" in proc.stdout


def test_serving_commands_run_without_torch(base_venv, serve_artifact, tmp_path):
    data = tmp_path / "texts.csv"
    data.write_text("text\nwhat a great day\nthis is awful\n")
    proc = deploykit(base_venv, "predict", serve_artifact, "--data", data, "--out", tmp_path / "p.jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2

    proc = deploykit(base_venv, "triton", serve_artifact, "--out", tmp_path / "triton")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "triton" / "classifier" / "config.pbtxt").is_file()

    proc = deploykit(base_venv, "k8s", "--image", "registry.example.com/c:1", "--out", tmp_path / "k8s",
                     "--manifests", ROOT / "k8s", "--no-validate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "k8s" / "kustomization.yaml").is_file()

    # The template ships inside the package: no checkout needed.
    proc = deploykit(base_venv, "build", serve_artifact, "--tag", "dk-base:v1",
                     "--bentoml-home", tmp_path / "bentoml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "bentoml" / "bentos" / "dk-base" / "v1" / "src" / "deploykit" / "serve" / "service.py").is_file()


def test_serve_starts_without_torch(base_venv, serve_artifact, tmp_path):
    """`deploykit serve` refuses a tampered artifact (exit 4): it got as far as checking it."""
    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    with open(art / "tokenizer.json", "a") as fh:
        fh.write(" ")
    proc = deploykit(base_venv, "serve", art, "--port", "1")
    assert proc.returncode == 4 and "tokenizer.json" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv,extra", [
    (["train", "--data", "tweets", "--out", "runs/x"], "train"),
    (["export", "checkpoint", "--out", "art"], "train"),
    (["demo", "--quick"], "demo"),
])
def test_a_missing_extra_names_it_and_exits_2(base_venv, tmp_path, argv, extra):
    proc = deploykit(base_venv, *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"pip install 'deploykit[{extra}]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # failed before doing anything


def test_an_import_only_some_runs_need_names_its_extra(base_venv, kubectl, tmp_path):
    """`deploykit k8s` validates only where kubectl is found: then it needs kubernetes-validate."""
    out = tmp_path / "k8s"
    proc = deploykit(base_venv, "k8s", "--image", "registry.example.com/c:1", "--out", out,
                     "--manifests", ROOT / "k8s")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'kubernetes_validate'" in proc.stderr and "pip install 'deploykit[k8s]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_parquet_without_pyarrow_says_what_to_install(base_venv, serve_artifact, tmp_path):
    import pandas as pd

    data = tmp_path / "texts.parquet"
    pd.DataFrame({"text": ["fine"]}).to_parquet(data)
    proc = deploykit(base_venv, "predict", serve_artifact, "--data", data, "--out", tmp_path / "p.jsonl")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install pyarrow" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.jsonl").exists()

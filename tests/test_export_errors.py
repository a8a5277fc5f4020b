"""Bad input to export/verify: a clear message, the DESIGN.md exit code, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_fixtures import heldout_csv
from factories import make_checkpoint

from deploykit.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint", "bert")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    return heldout_csv(tmp_path_factory.mktemp("data") / "heldout.csv", n=12)


def _export(checkpoint: Path, out: Path, heldout: Path, *extra: str) -> int:
    return main(["export", str(checkpoint), "--out", str(out), "--data", str(heldout), "--split", "all",
                 "--optimize", "none", "--quantize", "none", *extra])


def _no_leftovers(out: Path) -> None:
    assert not list(out.parent.glob(f".{out.name}.*")), "a temporary folder was left behind"


def _broken_copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "broken"))


def test_not_a_checkpoint(tmp_path, heldout, caplog):
    (tmp_path / "empty").mkdir()
    assert _export(tmp_path / "empty", tmp_path / "art", heldout) == 2
    assert "no config.json" in caplog.text and not (tmp_path / "art").exists()


def test_checkpoint_without_tokenizer(checkpoint, tmp_path, heldout, caplog):
    broken = _broken_copy(checkpoint, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()
    assert _export(broken, tmp_path / "art", heldout) == 2
    assert "no tokenizer files" in caplog.text
    _no_leftovers(tmp_path / "art")


def test_checkpoint_without_labels(checkpoint, tmp_path, heldout, caplog):
    broken = _broken_copy(checkpoint, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    (broken / "config.json").write_text(json.dumps(config))
    assert _export(broken, tmp_path / "art", heldout) == 2
    assert "no label names" in caplog.text


def test_unsupported_architecture(checkpoint, tmp_path, heldout, caplog):
    broken = _broken_copy(checkpoint, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "nosuchformer"
    (broken / "config.json").write_text(json.dumps(config))
    assert _export(broken, tmp_path / "art", heldout) == 2
    assert "'nosuchformer' cannot be exported" in caplog.text and "deberta-v2" in caplog.text


def test_refuses_to_replace_another_artifact_unless_overwrite(checkpoint, tmp_path, heldout, caplog):
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "someone-else"}')
    assert _export(checkpoint, out, heldout) == 2
    assert "already holds another artifact" in caplog.text and "--overwrite" in caplog.text
    assert (out / "manifest.json").read_text() == '{"name": "someone-else"}'
    assert _export(checkpoint, out, heldout, "--overwrite") == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert set(doc["variants"]) == {"fp32"} and doc["default_variant"] == "fp32"
    assert set(doc["files"]) == {"model.onnx", "tokenizer.json", "config.json"}
    _no_leftovers(out)


def test_unwritable_output_folder(checkpoint, tmp_path, heldout, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _export(checkpoint, blocker / "art", heldout) == 2
    assert "choose a writable --out" in caplog.text


def test_bad_option_values(checkpoint, tmp_path, heldout, caplog):
    assert _export(checkpoint, tmp_path / "art", heldout, "--batch-sizes", "0,x") == 2
    assert "--batch-sizes" in caplog.text
    assert _export(checkpoint, tmp_path / "art", heldout, "--default-variant", "int8") == 2
    assert "--default-variant int8 is not among" in caplog.text
    _no_leftovers(tmp_path / "art")


def test_parity_failure_exits_3_and_marks_variant_not_servable(checkpoint, tmp_path, heldout, caplog):
    out = tmp_path / "art"
    # No fused graph matches PyTorch to 1e-12: the opt variant must miss the bound.
    assert main(["export", str(checkpoint), "--out", str(out), "--data", str(heldout), "--split", "all",
                 "--quantize", "none", "--fp32-atol", "1e-12"]) == 3
    doc = json.loads((out / "manifest.json").read_text())
    opt = doc["variants"]["opt"]
    assert opt["servable"] is False and opt["parity"]["failures"][0]["check"] == "max_abs_diff"
    assert "FAIL max_abs_diff" in caplog.text and "--allow-parity-failure" in caplog.text


def test_verify_refuses_a_folder_that_is_not_an_artifact(checkpoint, tmp_path, caplog):
    assert main(["verify", str(tmp_path), "--checkpoint", str(checkpoint)]) == 2
    assert "not a deploykit artifact" in caplog.text


def test_export_cli_defaults_to_the_checkpoints_own_held_out_split(checkpoint, tmp_path):
    """The real command line: data, seed and ratios come from the checkpoint's deploykit.yaml."""
    from deploykit.data import source_sha256

    out = tmp_path / "art"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "export", str(checkpoint), "--out", str(out),
                           "--max-eval-samples", "40", "--optimize", "O1", "--quantize", "none",
                           "--name", "tweets-sentiment"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["name"] == "tweets-sentiment"
    assert doc["evaluation"] == {"data": "tweets", "split": "test", "n": 40, "batch_sizes": [1, 7, 64]}
    assert doc["provenance"]["data_sha256"] == source_sha256("tweets")
    assert doc["variants"]["opt"]["optimization"]["level"] == "O1"
    assert doc["default_variant"] == "opt" and "parity on 40 test rows" in proc.stderr

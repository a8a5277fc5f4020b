"""Bad input to export/verify: a clear message, the exit code of docs/architecture.md, nothing
half-written; parity runs the serving runtime; verify re-checks the rows export recorded."""

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
from deploykit.manifest import Manifest


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
    manifest = Manifest.verify(out)
    assert set(manifest.variants) == {"fp32"} and manifest.default_variant == "fp32"
    assert set(manifest.files) == {"model.onnx", "tokenizer.json", "config.json"}
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
    opt = Manifest.verify(out).variants["opt"]
    assert opt.servable is False and opt.parity["failures"][0]["check"] == "max_abs_diff"
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
    manifest = Manifest.verify(out)
    assert manifest.name == "tweets-sentiment"
    rows = manifest.evaluation
    assert (rows.source, rows.split, rows.n, rows.batch_sizes) == ("tweets", "test", 40, (1, 7, 64))
    assert (rows.columns["text_column"], rows.columns["label_column"]) == ("text", "label") and len(rows.sha256) == 64
    assert manifest.provenance["data_sha256"] == source_sha256("tweets")
    assert manifest.variants["opt"].optimization["level"] == "O1"
    assert manifest.default_variant == "opt" and "parity on 40 test rows" in proc.stderr


def test_parity_runs_the_serving_runtime(checkpoint, tmp_path, heldout, monkeypatch, caplog):
    """A deliberately broken tokenizer setting in the runtime (truncation at 4 tokens instead of
    max_length) makes export's parity fail: parity measures exactly what is served."""
    from deploykit.runtime import Runtime

    load = Runtime._load_tokenizer

    def broken(self, tokenizer_file):
        tokenizer = load(self, tokenizer_file)
        tokenizer.enable_truncation(4)
        return tokenizer

    monkeypatch.setattr(Runtime, "_load_tokenizer", broken)
    out = tmp_path / "art"
    assert _export(checkpoint, out, heldout) == 3
    fp32 = Manifest.read(out).variants["fp32"]
    assert not fp32.servable and fp32.parity["failures"][0]["check"] == "max_abs_diff"
    assert "FAIL max_abs_diff" in caplog.text
    monkeypatch.undo()  # the runtime as shipped: the same export passes
    assert _export(checkpoint, tmp_path / "art2", heldout) == 0


def test_verify_defaults_to_the_rows_export_recorded(checkpoint, tmp_path, heldout, caplog):
    """Exported with --data (a CSV) from a checkpoint trained on tweets: verify without --data
    re-checks those CSV rows, says so, and takes other rows only when asked."""
    import logging

    from deploykit import export
    from deploykit.config import VerifyConfig

    data = Path(shutil.copy(heldout, tmp_path / "rows.csv"))
    out = tmp_path / "art"
    assert _export(checkpoint, out, data) == 0
    recorded = Manifest.read(out).evaluation
    assert recorded.source == str(data.resolve()) and recorded.split == "all" and recorded.n == 14

    caplog.set_level(logging.INFO)
    result = export.verify(VerifyConfig(artifact=str(out), checkpoint=str(checkpoint)))
    assert result["rows"]["data"] == recorded.source and result["rows"]["n"] == 14
    assert result["rows"]["rows_sha256"] == recorded.sha256 and result["rows"]["same_as_export"] is True
    assert "14 all rows of" in caplog.text and "the rows export checked (same sha256)" in caplog.text

    caplog.clear()  # other rows only when asked: the checkpoint's own tweets test split
    result = export.verify(VerifyConfig(artifact=str(out), checkpoint=str(checkpoint), max_eval_samples=20,
                                        split="test", data="tweets"))
    assert (result["rows"]["data"], result["rows"]["split"], result["rows"]["n"]) == ("tweets", "test", 20)
    assert result["rows"]["as_exported"] is False and "as asked" in caplog.text

    caplog.clear()  # the recorded file changed since export: verify says the rows differ
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join([lines[0], "some entirely different words,positive", *lines[2:]]) + "\n",
                    encoding="utf-8")
    assert main(["verify", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert "not the same rows any more" in caplog.text

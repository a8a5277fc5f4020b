"""Static INT8 through 'deploykit export': calibration on training rows only, --int8-scheme, the
manifest's record of the choice, and batch independence of what is served by default."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from factories import learnable_rows, make_checkpoint, write_csv

from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest

POISON = "zebra " * 40  # a long run of one rare word: activation ranges unlike any real row's


def _rows(n: int = 150) -> list[tuple[str, str]]:
    # Each text unique (a row number in it), so that a row's split is known by its text.
    return [(f"{text} row{i}", label) for i, (text, label) in enumerate(learnable_rows(n))]


@pytest.fixture(scope="module")
def split_checkpoint(tmp_path_factory):
    """A tiny BERT whose deploykit.yaml names a CSV that export re-splits into train/validation/test."""
    from deploykit import checkpoint as ckpt
    from deploykit import data
    from deploykit.tasks.classification import data as cls_data

    root = tmp_path_factory.mktemp("int8-schemes")
    rows = _rows()
    csv = write_csv(root / "rows.csv", rows)
    checkpoint = make_checkpoint(root / "checkpoint", "bert", data=str(csv), max_length=32)
    splits = cls_data.load_splits(data.rebuild_config(ckpt.train_config(checkpoint)))
    return root, rows, checkpoint, splits


def _export(checkpoint: Path, out: Path, **options) -> Manifest:
    from deploykit import export
    from deploykit.config import ExportConfig

    options = {"int8_fallback": "off", "calibration_samples": 64, "allow_parity_failure": True, **options}
    return Manifest.read(export.run(ExportConfig(checkpoint=str(checkpoint), out=str(out), **options)))


def _activation_scales(path: Path) -> dict[str, np.ndarray]:
    """The scale of every activation QuantizeLinear (the calibrated ranges), by the tensor it quantizes."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear"}


def test_calibration_never_reads_held_out_rows(split_checkpoint, tmp_path):
    """Poison every validation and test row: the calibrated scales do not move. Poison one
    calibration (training) row: they do, so the comparison can fail."""
    root, rows, checkpoint, splits = split_checkpoint
    held = set(splits.validation.texts) | set(splits.test.texts)
    assert held and not held & set(splits.train.texts)

    def variant(name: str, poisoned: set[str]) -> Path:
        text_of = {t: f"{POISON}{i}" for i, t in enumerate(sorted(poisoned))}
        return write_csv(root / f"{name}.csv", [(text_of.get(t, t), label) for t, label in rows])

    clean = _export(checkpoint, tmp_path / "clean", int8_scheme="static-minmax")
    held_poisoned = _export(checkpoint, tmp_path / "held", data=str(variant("held", held)),
                            int8_scheme="static-minmax")
    first_training = splits.train.texts[0]
    train_poisoned = _export(checkpoint, tmp_path / "train", data=str(variant("train", {first_training})),
                             int8_scheme="static-minmax")

    from deploykit import checkpoint as ckpt
    from deploykit import data
    from deploykit.tasks.classification import data as cls_data

    # The poison reached the rows parity scores, and the split put the same rows in train.
    assert held_poisoned.evaluation.sha256 != clean.evaluation.sha256
    stored = ckpt.train_config(checkpoint)
    poisoned_splits = cls_data.load_splits(data.rebuild_config(stored, data=str(root / "held.csv")))
    assert poisoned_splits.train.texts == splits.train.texts
    calibration = clean.variants["int8"].quantization["calibration"]
    assert calibration["split"] == "train" and calibration["rows"] == 64
    expected = hashlib.sha256(json.dumps(splits.train.texts[:64]).encode()).hexdigest()
    assert calibration["rows_sha256"] == expected
    assert held_poisoned.variants["int8"].quantization["calibration"]["rows_sha256"] == expected
    assert train_poisoned.variants["int8"].quantization["calibration"]["rows_sha256"] != expected

    scales = _activation_scales(tmp_path / "clean" / "model.int8.onnx")
    assert len(scales) >= 2 * 3 + 2  # every layer's MatMul inputs and the head's
    after_held = _activation_scales(tmp_path / "held" / "model.int8.onnx")
    after_train = _activation_scales(tmp_path / "train" / "model.int8.onnx")
    assert after_held.keys() == scales.keys()
    assert all(np.array_equal(after_held[k], scales[k]) for k in scales)
    assert any(not np.array_equal(after_train[k], scales[k]) for k in scales)


@pytest.mark.parametrize("scheme", ["static-minmax", "static-entropy"])
def test_an_explicit_scheme_is_written_and_recorded(split_checkpoint, tmp_path, scheme):
    from deploykit.export import quantize

    _, _, checkpoint, splits = split_checkpoint
    manifest = _export(checkpoint, tmp_path / "art", int8_scheme=scheme)
    variant = manifest.variants["int8"]
    q = variant.quantization
    assert q["scheme"] == scheme and q["mode"] == "static" and q["format"] == "QDQ"
    assert q["calibration_method"] == scheme.split("-")[1] == q["calibration"]["method"]
    selection = q["selection"]
    assert selection["requested"] == selection["chosen"] == scheme
    assert [s["scheme"] for s in selection["schemes"]] == [scheme]  # nothing else was tried
    (record,) = selection["schemes"]
    assert 0 <= record["agreement"] <= 1 and 0 <= record["expected_agreement"] <= 1
    assert isinstance(record["macro_f1_drop"], float) and record["passed"] in (True, False)
    assert record["batch_independence"]["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL
    assert selection["split"] == "validation" and selection["rows"] == len(splits.validation.texts)
    # Every operator still holding float weights, as counted in the written file: the embeddings only.
    counted = quantize.float_weight_ops(tmp_path / "art" / "model.int8.onnx")
    assert q["float_weight_ops"] == record["float_weight_ops"] == counted == {"Gather": 3}
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["variants"]["int8"]["quantization"] == q


def test_scheme_options_are_checked(split_checkpoint, tmp_path, caplog, capsys):
    from deploykit.cli import main

    _, _, checkpoint, _ = split_checkpoint
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--out", str(tmp_path / "a"), "--int8-scheme", "static-fp4"])
    assert exit_info.value.code == 2
    assert "static-entropy-fallback" in capsys.readouterr().err  # the choices are listed
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b"), "--quantize", "dynamic",
                 "--int8-scheme", "static-minmax"]) == 2
    assert "needs --quantize auto or static" in caplog.text
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_default_variant_is_batch_independent(split_checkpoint, tmp_path):
    """The default export serves static INT8 (its logits the same alone and in any batch), and
    the served runtime shows it: every row alone equals the same row among mixed batch mates."""
    from deploykit.runtime import Runtime

    _, _, checkpoint, splits = split_checkpoint
    manifest = _export(checkpoint, tmp_path / "art", quantize="static")
    default = manifest.variants[manifest.default_variant]
    assert default.name == "int8" and default.quantization["scheme"].startswith("static-")
    record = default.parity["batch_independence"]
    assert record["rows"] == manifest.evaluation.n and record["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL
    runtime = Runtime(tmp_path / "art")
    assert runtime.variant == "int8"
    held = splits.test.texts + splits.validation.texts
    texts = [t + " the road" * (i % 7) for i, t in enumerate(held)]  # lengths from 9 to 21 tokens
    rows = runtime.tokenize(texts)
    alone = np.concatenate([runtime.run([r]) for r in rows])
    order = np.random.default_rng(1).permutation(len(rows))
    for size in (5, 16):
        mixed = np.zeros_like(alone)
        for start in range(0, len(rows), size):
            part = order[start:start + size]
            mixed[part] = runtime.run([rows[i] for i in part])
        assert np.abs(mixed - alone).max() <= BATCH_INDEPENDENCE_ATOL
    assert len({len(r.ids) for r in rows}) > 3  # mixed lengths: the batches really were padded


@pytest.mark.parametrize("mode, fails", [("auto", False), ("static", True), ("dynamic", True)])
def test_an_auto_int8_that_misses_the_held_out_gate_does_not_fail_the_export(mode, fails, caplog):
    """--quantize auto chose INT8 on validation rows; the held-out gate then rejected it: the
    export succeeds with int8 not servable (a warning names the scheme and the variant served).
    An explicit --quantize static/dynamic insists, so the miss fails it; fp32/opt misses always do."""
    from types import SimpleNamespace

    from deploykit.export.pipeline import fatal_failures
    from deploykit.tasks.classification.export import tolerated

    exporter = SimpleNamespace(tolerated=lambda variant, manifest: tolerated(mode, variant, manifest))

    def hard_failures(mode, results, manifest):
        return fatal_failures(results, manifest, exporter)

    manifest = SimpleNamespace(default_variant="opt", variants={
        "int8": SimpleNamespace(quantization={"scheme": "static-minmax-fallback"})})
    results = [SimpleNamespace(name="fp32", passed=True), SimpleNamespace(name="int8", passed=False)]
    assert [r.name for r in hard_failures(mode, results, manifest)] == ([] if not fails else ["int8"])
    if not fails:
        assert "static-minmax-fallback" in caplog.text and "default variant is opt" in caplog.text
    results.append(SimpleNamespace(name="opt", passed=False))
    assert "opt" in [r.name for r in hard_failures(mode, results, manifest)]

"""The accuracy-aware INT8 search: its arithmetic, its ranking of operators, and the artifact it yields."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from factories import LABELS, learnable_rows, tiny_model, tiny_tokenizer, write_csv

from deploykit.tasks.classification.int8_fallback import expected_agreement, predict_float_count, smallest_passing
from deploykit.manifest import Manifest

LAYERS = 2  # tiny_model's default depth
OUTLIER_NODE = "/bert/encoder/layer.1/output/dense/MatMul"


# --- the search arithmetic ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 24, 37])
def test_smallest_passing_finds_the_threshold_from_any_guess(n):
    for threshold in [*range(1, n + 1), None]:
        for guess in range(1, n + 1):
            calls = []

            def passes(k: int) -> bool:
                calls.append(k)
                return threshold is not None and k >= threshold

            assert smallest_passing(n, guess, passes) == threshold, (threshold, guess, calls)
            assert 0 not in calls and all(1 <= k <= n for k in calls)
            assert len(calls) <= 2 * n.bit_length() + 2, calls  # doubling + bisection, not a scan


def test_smallest_passing_with_nothing_to_try():
    assert smallest_passing(0, 1, lambda k: True) is None


def test_predicted_float_count_removes_enough_error_variance():
    # Variances 16, 4, 1, 1 (total 22). Half the flips may stay: at most 11 of the variance
    # (dropping the first leaves 6); a tenth may stay, 2.2: the first two leave 2.
    assert predict_float_count([4, 2, 1, 1], disagreement=0.02, target_disagreement=0.01) == 1
    assert predict_float_count([4, 2, 1, 1], disagreement=0.02, target_disagreement=0.002) == 2
    assert predict_float_count([4, 2, 1, 1], disagreement=0.02, target_disagreement=0.001) == 3
    assert predict_float_count([4, 2, 1, 1], disagreement=0.02, target_disagreement=0.0) == 4
    # The order given is the order operators go float, whatever their damage.
    assert predict_float_count([1, 1, 2, 4], disagreement=0.02, target_disagreement=0.002) == 4
    # Nothing to go on, or already within the target: start with one.
    assert predict_float_count([0, 0], disagreement=0.02, target_disagreement=0.01) == 1
    assert predict_float_count([4, 2], disagreement=0.005, target_disagreement=0.01) == 1
    assert predict_float_count([], disagreement=0.02, target_disagreement=0.01) == 1


def test_expected_agreement_matches_the_count_under_gaussian_noise():
    import numpy as np

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20000, 3)).astype(np.float32)
    assert expected_agreement(reference, reference) == 1.0
    estimates = []
    for scale in (0.02, 0.1, 0.3):
        noisy = reference + rng.normal(scale=scale, size=reference.shape)
        counted = float((noisy.argmax(1) == reference.argmax(1)).mean())
        estimates.append(expected_agreement(reference, noisy))
        assert abs(estimates[-1] - counted) < 0.01, (scale, estimates[-1], counted)
    assert estimates == sorted(estimates, reverse=True) and estimates[-1] < 0.95
    # A few hundred rows: the estimate varies less between two noise draws than the count does.
    small = reference[:500]
    draws = [small + rng.normal(scale=0.1, size=small.shape) for _ in range(40)]
    counts = [float((d.argmax(1) == small.argmax(1)).mean()) for d in draws]
    expected = [expected_agreement(small, d) for d in draws]
    assert np.std(expected) < np.std(counts) / 3


# --- on a real (tiny) exported graph -----------------------------------------------------------

@pytest.fixture(scope="module")
def outlier_artifact(tmp_path_factory):
    """A tiny BERT whose layer-1 GELU output has one huge channel, exported without INT8.

    Dynamic quantization scales a MatMul's input by its largest value, so the MatMul reading
    that channel (layer 1's feed-forward output) loses most of its precision: the search must
    rank it first.
    """
    import torch

    from deploykit import checkpoint as ckpt
    from deploykit import export
    from deploykit.config import ExportConfig, TrainConfig

    root = tmp_path_factory.mktemp("int8-search")
    data = write_csv(root / "rows.csv", learnable_rows(300))
    model = tiny_model("bert")
    texts = [text for text, _ in learnable_rows(300)]
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.bias[5] = 200.0
        # A random classifier gives every row the same label, by a tiny margin; scaling it up and
        # centring its logits on these rows spreads the labels over all three classes.
        model.classifier.weight *= 1000
        encoded = tiny_tokenizer()(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        model.classifier.bias -= model(**encoded).logits.mean(0)
    checkpoint = ckpt.save(model, tiny_tokenizer(), TrainConfig(data=str(data), max_length=32), {},
                           root / "checkpoint")
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"), data=str(data),
                                       quantize="none", split="all"))
    return root, data, checkpoint, artifact


def _rows(data: Path):
    import csv

    from deploykit.tasks.classification.int8_fallback import SearchRows

    with open(data, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return SearchRows([r["text"] for r in rows], [LABELS.index(r["label"]) for r in rows], "all")


def _nodes(path: Path) -> dict[str, str]:
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_candidates_are_exactly_what_the_quantizer_replaces(outlier_artifact, tmp_path):
    from deploykit.export import quantize

    _, _, _, artifact = outlier_artifact
    src = artifact / "model.opt.onnx"
    weights = quantize.candidate_nodes(src)
    candidates = list(weights)
    ops = _nodes(src)
    # The pooler's and classifier's Gemm go by the name of the MatMul the quantizer makes of them.
    assert Counter(ops.get(n) or ops[n.removesuffix("_MatMul")] for n in candidates) == {
        "Attention": LAYERS, "MatMul": 3 * LAYERS, "EmbedLayerNormalization": 1, "Gemm": 2}
    hidden, ffn = 32, 64  # tiny_config's sizes
    assert weights["/bert/encoder/layer.0/intermediate/dense/MatMul"] == hidden * ffn
    assert weights["Attention_0"] == hidden * 3 * hidden
    assert weights["EmbedLayerNormalization_0"] == (30522 + 514 + 2) * hidden
    quantize.quantize_dynamic(src, tmp_path / "all.onnx", False)
    kept = _nodes(tmp_path / "all.onnx")
    replaced = [n for n in ops if kept.get(n) != ops[n]]
    assert sorted(replaced) == sorted(n if n in ops else n.removesuffix("_MatMul") for n in candidates)
    # Each one, named in nodes_to_exclude, stays float.
    quantize.quantize_dynamic(src, tmp_path / "none.onnx", False, float_nodes=candidates)
    assert quantize.quantized_matmuls(tmp_path / "none.onnx") == {"float_MatMul": 3 * LAYERS + 2}


def test_search_ranks_the_outlier_first_and_keeps_the_fewest_in_float(outlier_artifact, tmp_path):
    from deploykit.export import quantize
    from deploykit.tasks.classification import int8_fallback

    _, data, _, artifact = outlier_artifact
    dst = tmp_path / "out" / "model.int8.onnx"
    dst.parent.mkdir()
    src = artifact / "model.opt.onnx"
    scorer = int8_fallback.Scorer(src, artifact / "tokenizer.json", _rows(data), 32, [1, 7, 64],
                                  min_agreement=0.97, max_f1_drop=0.05)
    info = int8_fallback.search(src, dst, quantize.Dynamic(reduce_range=False), scorer)
    record = info["fallback"]
    trials = {t["float_nodes"]: t for t in record["trials"]}
    assert not trials[0]["passed"], "precondition: the all-INT8 graph must miss the bounds here"
    assert list(record["weights"]) == list(record["damage"])
    gain = [record["damage"][n] ** 2 / record["weights"][n] for n in record["damage"]]
    assert gain == sorted(gain, reverse=True)  # most error variance removed per float weight first
    # Among the encoder's operators (the pooler and the scaled-up classifier sit on the logits
    # themselves), the MatMul that reads the outlier channel does by far the most damage.
    encoder = sorted(((d, n) for n, d in record["damage"].items() if "/encoder/" in n or n.startswith("Attention")),
                     reverse=True)
    assert encoder[0][1] == OUTLIER_NODE and encoder[0][0] > 10 * encoder[1][0], json.dumps(record["damage"], indent=0)

    k = len(info["float_nodes"])
    assert record["met"] and trials[k]["passed"] and record["min_expected_agreement"] == 0.97
    assert trials[k]["agreement"] >= 0.97 and trials[k]["expected_agreement"] >= 0.97
    assert not trials[k - 1]["passed"]  # the bisection tried one fewer and it missed
    assert info["float_nodes"] == list(record["damage"])[:k]  # the first k of that ranking
    # The written graph is that trial: exactly those operators float, every other one integer.
    ops = _nodes(dst)
    assert all(ops.get(n) in ("MatMul", "Attention", "EmbedLayerNormalization") for n in info["float_nodes"])
    float_attention = sum(ops[n] == "Attention" for n in info["float_nodes"])
    assert info["quantized_ops"].get("QAttention", 0) == LAYERS - float_attention
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in dst.parent.iterdir()] == [dst.name]


def test_search_stops_at_the_all_int8_graph_when_it_meets_the_bounds(outlier_artifact, tmp_path):
    from deploykit.export import quantize
    from deploykit.tasks.classification import int8_fallback

    _, data, _, artifact = outlier_artifact
    dst = tmp_path / "out" / "model.int8.onnx"
    dst.parent.mkdir()
    src = artifact / "model.opt.onnx"
    scorer = int8_fallback.Scorer(src, artifact / "tokenizer.json", _rows(data), 32, [64],
                                  min_agreement=0.0, max_f1_drop=1.0)
    info = int8_fallback.search(src, dst, quantize.Dynamic(reduce_range=False), scorer)
    assert info["float_nodes"] == [] and info["fallback"]["met"]
    assert [t["float_nodes"] for t in info["fallback"]["trials"]] == [0]
    assert "damage" not in info["fallback"]  # no per-operator measurement was needed
    assert info["quantized_ops"]["QAttention"] == LAYERS and info["quantized_ops"]["float_MatMul"] == 0


def test_export_searches_on_validation_rows_by_default(outlier_artifact, tmp_path):
    from deploykit import checkpoint as ckpt
    from deploykit import data as data_module
    from deploykit.tasks.classification import data as cls_data
    from deploykit import export
    from deploykit.config import ExportConfig

    _, data, checkpoint, _ = outlier_artifact
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), data=str(data),
                                       split="test", quantize="dynamic", allow_parity_failure=True))
    manifest = Manifest.read(artifact)
    quantization = manifest.variants["int8"].quantization
    record = quantization["fallback"]
    stored = data_module.rebuild_config(ckpt.train_config(checkpoint), data=str(data))
    validation, _ = cls_data.held_out(stored, "validation", LABELS)
    test, _ = cls_data.held_out(stored, "test", LABELS)
    assert record["mode"] == "auto" and record["split"] == "validation" and record["rows"] == len(validation.texts)
    # Default margin: two standard errors of the gate's count on the test rows; the count itself
    # must reach the gate on the search rows.
    assert record["min_agreement"] == 0.99
    assert record["min_expected_agreement"] == pytest.approx(min(1.0, 0.99 + 2 * (0.99 * 0.01 / len(test.texts)) ** 0.5))
    assert record["min_counted_agreement"] == 0.99
    assert record["reference"] == "model.opt.onnx"
    assert record["met"] == any(t["passed"] for t in record["trials"])
    ops = _nodes(artifact / "model.int8.onnx")
    assert all(ops[n] in ("MatMul", "Attention", "EmbedLayerNormalization") for n in quantization["float_nodes"])

    # The demo's summary reports what the search kept in float.
    from deploykit import demo_summary

    facts = demo_summary.export_facts(manifest, checkpoint)
    assert facts["variant_facts"]["int8"]["fallback"] == {"float_nodes": quantization["float_nodes"],
                                                     "candidates": record.get("candidates"), "rows": record["rows"]}
    report = {"mode": "full", "export": {**facts, "gates": {"int8_min_agreement": 0.99, "int8_max_f1_drop": 0.01}}}
    text = "\n".join(demo_summary._parity(report))
    kept = len(quantization["float_nodes"])
    assert kept > 0, "precondition: the outlier model's all-INT8 graph misses the gate"
    assert f"INT8 keeps {kept} of {record['candidates']} quantizable operators" in text
    assert f"measured on {record['rows']} validation rows" in text


def test_export_with_the_fallback_off_quantizes_everything(outlier_artifact, tmp_path):
    from deploykit import export
    from deploykit.config import ExportConfig

    _, data, checkpoint, _ = outlier_artifact
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), data=str(data),
                                       split="test", quantize="dynamic", int8_fallback="off",
                                       allow_parity_failure=True))
    quantization = Manifest.read(artifact).variants["int8"].quantization
    assert quantization["fallback"] == {"mode": "off"} and quantization["float_nodes"] == []
    assert quantization["quantized_ops"]["float_MatMul"] == 0


def test_static_ladder_ends_in_the_fallback_that_keeps_the_outlier_float(outlier_artifact, tmp_path, caplog):
    """The default export: static MinMax and Entropy both miss on the outlier model, so the
    fallback runs on the better of the two calibrations, keeps the outlier's MatMul float and is
    served (its fixed scales keep every text's logits the same whatever its batch mates)."""
    import logging

    from deploykit import export
    from deploykit.config import ExportConfig
    from deploykit.export import quantize
    from deploykit.manifest import BATCH_INDEPENDENCE_ATOL

    _, data, checkpoint, _ = outlier_artifact
    caplog.set_level(logging.INFO, logger="deploykit")
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), data=str(data),
                                       split="test", int8_min_agreement=0.9, int8_max_f1_drop=0.2,
                                       int8_search_margin=0.0, allow_parity_failure=True))
    manifest = Manifest.read(artifact)
    variant = manifest.variants["int8"]
    q = variant.quantization
    selection = q["selection"]
    schemes = selection["schemes"]
    names = [s["scheme"] for s in schemes]
    assert names[:2] == ["static-minmax", "static-entropy"] and not any(s["passed"] for s in schemes[:2])
    better = max(schemes[:2], key=lambda s: s["expected_agreement"])
    assert names[2:] == [better["scheme"] + "-fallback"]
    assert selection["met"] and selection["chosen"] == q["scheme"] == names[2] and schemes[2]["passed"]
    assert q["calibration_method"] == better["scheme"].split("-")[1]
    assert OUTLIER_NODE in q["float_nodes"] and q["fallback"]["met"]
    # The one line of export's output that says which scheme won and why.
    assert f"int8: {names[2]} meets the bounds" in caplog.text and "tried first: static-minmax misses" in caplog.text
    assert schemes[2]["float_weight_ops"] == q["float_weight_ops"] == quantize.float_weight_ops(
        artifact / "model.int8.onnx")
    assert q["float_weight_ops"]["MatMul"] + q["float_weight_ops"].get("Gemm", 0) == len(q["float_nodes"])
    for record in schemes:
        assert record["batch_independence"]["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL
        assert record["agreement"] <= 1 and "why" in record
    assert variant.servable and manifest.default_variant == "int8"
    assert variant.batch_dependence <= BATCH_INDEPENDENCE_ATOL


def test_a_batch_dependent_dynamic_int8_is_servable_but_not_the_default(outlier_artifact, tmp_path):
    from deploykit import export
    from deploykit.config import ExportConfig
    from deploykit.manifest import BATCH_INDEPENDENCE_ATOL

    _, data, checkpoint, _ = outlier_artifact
    # Bounds loose enough that the dynamic graph passes parity: only batch independence keeps it off.
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), data=str(data),
                                       split="test", quantize="dynamic", int8_fallback="off",
                                       int8_min_agreement=0.0, int8_max_f1_drop=1.0))
    manifest = Manifest.read(artifact)
    int8 = manifest.variants["int8"]
    assert int8.servable and int8.batch_dependence > BATCH_INDEPENDENCE_ATOL
    assert manifest.default_variant == "opt" and manifest.pick("int8").name == "int8"
    assert manifest.variants["opt"].batch_dependence <= BATCH_INDEPENDENCE_ATOL

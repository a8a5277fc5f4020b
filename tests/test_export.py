"""Export of tiny random checkpoints of six architectures: graph facts, parity, the manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import LONG_TEXT, export_artifact, heldout_csv
from factories import ARCHS

from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest

LAYERS = 2  # tiny_model's default depth


@pytest.fixture(scope="session")
def heldout(tmp_path_factory) -> Path:
    return heldout_csv(tmp_path_factory.mktemp("data") / "heldout.csv")


@pytest.fixture(scope="session")
def build(tmp_path_factory, heldout):
    """build(arch) -> (arch, checkpoint, artifact, manifest), exported once per architecture."""
    cache: dict[str, tuple] = {}

    def _build(arch: str, **options) -> tuple:
        key = (arch, *sorted(options.items()))
        if key not in cache:
            checkpoint, artifact = export_artifact(tmp_path_factory.mktemp(arch), arch, heldout, **options)
            cache[key] = arch, checkpoint, artifact, Manifest.read(artifact)
        return cache[key]

    return _build


@pytest.fixture(scope="session", params=ARCHS)
def exported(request, build):
    return build(request.param)


@pytest.fixture(scope="session")
def bert(build):
    return build("bert")


@pytest.fixture(scope="session")
def dynamic_bert(build):
    return build("bert", quantize="dynamic")


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def test_artifact_is_complete_and_verifiable(exported):
    import onnxruntime as ort

    arch, _, artifact, manifest = exported
    expected = {"model.onnx", "model.opt.onnx", "model.int8.onnx", "tokenizer.json", "config.json"}
    assert {p.name for p in artifact.iterdir()} == expected | {"manifest.json"}
    assert set(manifest.files) == expected  # every file but the manifest, hashed
    assert Manifest.verify(artifact) == manifest
    # The file on disk is exactly what the typed manifest writes (nothing dropped or added).
    assert json.loads((artifact / "manifest.json").read_text()) == manifest.to_json()
    assert manifest.schema_version == 1 and manifest.task == "text-classification"
    assert manifest.head.labels == ("negative", "neutral", "positive")
    assert manifest.head.output == "logits" and manifest.max_length == 128
    # The manifest's inputs are exactly the graph's (DistilBERT and RoBERTa-likes: no token_type_ids).
    for variant in manifest.variants.values():
        session = ort.InferenceSession(str(artifact / variant.file), providers=["CPUExecutionProvider"])
        assert tuple(i.name for i in session.get_inputs()) == manifest.inputs
        assert [o.name for o in session.get_outputs()] == ["logits"]
    assert ("token_type_ids" in manifest.inputs) == (arch in ("bert", "electra", "deberta-v2"))
    rows = manifest.evaluation
    assert rows.n == 32 and rows.split == "all" and rows.columns["text_column"] == "text" and len(rows.sha256) == 64
    assert set(manifest.provenance) >= {"torch", "transformers", "onnx", "onnxruntime", "opset",
                                        "data_sha256", "checkpoint"}


def test_fp32_and_fused_graphs_pass_parity(exported):
    _, _, _, manifest = exported
    for name in ("fp32", "opt"):
        variant = manifest.variants[name]
        assert variant.parity["passed"] and variant.servable, variant.parity
        assert variant.parity["max_abs_diff"] <= 1e-4
        assert variant.parity["label_agreement"] == 1.0
        assert variant.metrics == manifest.reference_metrics
    int8 = manifest.variants["int8"]
    assert set(int8.parity) >= {"max_abs_diff", "mean_abs_diff", "label_agreement", "passed"}
    # The default follows the fixed rule: int8, else opt, else fp32, the first servable.
    servable = [n for n in ("int8", "opt", "fp32") if manifest.variants[n].servable]
    assert manifest.default_variant == servable[0]


def test_fused_operators_in_optimized_graph(exported):
    arch, _, artifact, manifest = exported
    ops = Counter(n.op_type for n in _graph(artifact / "model.opt.onnx").node)
    recorded = manifest.variants["opt"].fused_ops
    assert recorded == {k: v for k, v in sorted(ops.items()) if k in recorded}
    assert ops["SkipLayerNormalization"] >= 2 * LAYERS - 1
    assert ops["BiasGelu"] + ops["Gelu"] + ops["FastGelu"] >= LAYERS
    missing = manifest.variants["opt"].optimization["missing_fusions"]
    if arch == "deberta-v2":  # onnxruntime has no attention fusion for DeBERTa's disentangled attention
        assert missing == ["Attention"] and ops["Attention"] == 0
    else:
        assert missing == [] and ops["Attention"] + ops["MultiHeadAttention"] == LAYERS
        assert ops["Softmax"] == 0  # no unfused attention left behind


def test_static_int8_runs_every_weight_matmul_on_integers(exported):
    """The default scheme family: static QDQ of the plain graph. Every MatMul/Gemm that reads a
    weight reads it through DequantizeLinear (int8 weights), its activation input too, and
    onnxruntime fuses each such group into an integer kernel; only the embedding lookups keep
    float weights. Fixed scales: each row's logits are the same alone and in any batch."""
    import onnxruntime as ort

    from deploykit.export import quantize

    arch, _, artifact, manifest = exported
    graph = _graph(artifact / "model.int8.onnx")
    variant = manifest.variants["int8"]
    quant = variant.quantization
    assert quant["mode"] == "static" and quant["format"] == "QDQ" and quant["per_channel"] is True
    assert quant["scheme"] in ("static-minmax", "static-entropy") and quant["source"] == "model.onnx"
    plain = _graph(artifact / "model.onnx")
    inits = {t.name for t in plain.initializer if len(t.dims) >= 2}
    weight_ops = [n.name for n in plain.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & inits]
    # q, k, v, attention output, FFN in and out per layer, plus the classifier (and a pooler)
    assert len(weight_ops) >= 6 * LAYERS + 1
    produced = {o: n for n in graph.node for o in n.output}
    dq_weight = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in produced}
    dq_activation = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in produced}
    by_name = {n.name: n for n in graph.node}
    for name in weight_ops:
        node = by_name[name]
        assert set(node.input) & dq_weight and set(node.input) & dq_activation, name
    assert quant["quantized_ops"]["integer_MatMul"] >= len(weight_ops)
    assert quant["float_weight_ops"] == quantize.float_weight_ops(artifact / "model.int8.onnx")
    assert set(quant["float_weight_ops"]) == {"Gather"}  # the embedding tables
    # What onnxruntime runs: the fused integer kernel, no float MatMul left for the weights.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(artifact.parent / f"{arch}-int8-optimized.onnx")
    ort.InferenceSession(str(artifact / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in _graph(Path(options.optimized_model_filepath)).node)
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] >= len(weight_ops), ops
    assert variant.batch_dependence is not None and variant.batch_dependence <= BATCH_INDEPENDENCE_ATOL
    assert set(variant.parity) >= {"max_abs_diff", "mean_abs_diff", "label_agreement", "passed",
                                   "batch_independence"}


def test_dynamic_int8_quantizes_every_matmul_and_is_not_the_default_when_batch_dependent(dynamic_bert):
    _, _, artifact, manifest = dynamic_bert
    ops = Counter(n.op_type for n in _graph(artifact / "model.int8.onnx").node)
    variant = manifest.variants["int8"]
    quant = variant.quantization
    assert quant["mode"] == "dynamic" and quant["scheme"] == "dynamic" and quant["per_channel"] is True
    assert isinstance(quant["reduce_range"], bool) and quant["source"] == "model.opt.onnx"
    # Fused QKV per layer -> QAttention; attention output, FFN in and out per layer, plus
    # the pooler/classifier dense layers -> MatMulInteger; no float MatMul left.
    assert ops["QAttention"] == LAYERS
    assert ops["MatMulInteger"] >= 3 * LAYERS + 1
    assert ops["MatMul"] == 0
    assert quant["quantized_ops"]["MatMulInteger"] == ops["MatMulInteger"]
    assert quant["float_weight_ops"] == {}  # the embeddings are quantized too (QEmbedLayerNormalization)
    assert (artifact / "model.int8.onnx").stat().st_size < (artifact / "model.opt.onnx").stat().st_size / 2
    # One activation scale per call for the whole batch: a text's logits move with its batch mates,
    # so the variant rule does not serve it by default however well it agrees.
    dependence = variant.batch_dependence
    assert dependence is not None and dependence > BATCH_INDEPENDENCE_ATOL
    assert manifest.default_variant == "opt"


def _lengths_texts(n: int = 64) -> list[str]:
    # "hello" is one WordPiece token: rows of 3 to past max_length tokens, shuffled so that
    # every batch mixes padded and full rows.
    lengths = np.linspace(1, 150, n).astype(int)
    np.random.default_rng(0).shuffle(lengths)
    return [" ".join(["hello"] * int(k)) for k in lengths]


def test_parity_at_other_batch_sizes_and_lengths(exported):
    from deploykit import checkpoint as ckpt
    from deploykit.tasks.classification import parity
    from deploykit.runtime import Runtime

    _, checkpoint, artifact, manifest = exported
    model, tokenizer = ckpt.load_model(checkpoint)
    texts = _lengths_texts() + [LONG_TEXT]
    reference = parity.reference_logits(model, tokenizer, texts, 128, batch_size=len(texts))
    for name in ("fp32", "opt"):
        runtime = Runtime(artifact, name)
        for sizes in ([1], [7], [64]):
            got = parity.runtime_logits(runtime, texts, sizes)
            assert np.abs(got - reference).max() <= 1e-4, (name, sizes)


def test_fused_attention_is_scaled_dot_product_attention(bert, tmp_path):
    """The fused Attention node's output equals softmax(QK^T/sqrt(d))V computed in numpy."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    _, _, artifact, _ = bert
    graph = _graph(artifact / "model.opt.onnx")
    node = next(n for n in graph.node if n.op_type == "Attention")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight, bias = inits[node.input[1]], inits[node.input[2]]
    heads = next(a.i for a in node.attribute if a.name == "num_heads")
    hidden = weight.shape[0]
    batch, seq, d = 2, 5, hidden // heads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
    lengths = np.array([5, 3], dtype=np.int32)  # row 2 has two padded positions

    single = helper.make_graph(
        [helper.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=heads)],
        "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden]),
                      helper.make_tensor_value_info("mask", TensorProto.INT32, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(single, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, tmp_path / "attention.onnx")
    (fused,) = ort.InferenceSession(str(tmp_path / "attention.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x, "mask": lengths})

    qkv = x @ weight + bias
    q, k, v = (qkv[..., i * hidden:(i + 1) * hidden].reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)
               for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    keep = np.arange(seq)[None, :] < lengths[:, None]  # mask the padded keys
    scores = np.where(keep[:, None, None, :], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


# --- parity gates and verify -----------------------------------------------------------------

def _rehash(artifact: Path) -> None:
    """Rewrite the manifest's hashes after a deliberate change (a tamper that sha256 cannot catch)."""
    from dataclasses import replace

    from deploykit.manifest import hash_files

    manifest = Manifest.read(artifact)
    files = hash_files(artifact)
    variants = {n: replace(v, bytes=files[v.file].bytes, sha256=files[v.file].sha256)
                for n, v in manifest.variants.items()}
    replace(manifest, files=files, variants=variants).write(artifact)


def _copy(artifact: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(artifact, dst))


def _verify(artifact: Path, checkpoint: Path, heldout: Path) -> int:
    from deploykit.cli import main

    return main(["verify", str(artifact), "--checkpoint", str(checkpoint), "--data", str(heldout),
                 "--split", "all"])


def test_int8_gate_flags_label_flips_and_f1_loss(bert, heldout):
    """The INT8 bounds' mechanics on a reference whose labels we flip on purpose."""
    from deploykit import checkpoint as ckpt
    from deploykit.config import ExportConfig
    from deploykit.export.parity import table
    from deploykit.tasks.classification import parity

    _, checkpoint, artifact, manifest = bert
    cfg = ExportConfig(checkpoint=str(checkpoint), data=str(heldout), split="all")
    held = parity.load_held_out(cfg, ckpt.train_config(checkpoint), list(manifest.head.labels))
    model, tokenizer = ckpt.load_model(checkpoint)
    reference = parity.reference_logits(model, tokenizer, held.texts, 128)
    # Make PyTorch confidently right on every row, so the real INT8 graph disagrees with it
    # wherever the (random) model's own prediction is wrong.
    fake = np.full_like(reference, -5.0)
    fake[np.arange(len(held.labels)), held.labels] = 5.0
    ref_metrics = parity.classification_metrics(fake, held.labels, 3)
    result = parity.check_variant(artifact, manifest, "int8", held, fake, ref_metrics, cfg)
    checks = {f["check"]: f for f in result.failures}
    assert not result.passed and set(checks) == {"label_agreement", "macro_f1_drop"}
    assert checks["label_agreement"]["missed_by"] == pytest.approx(0.99 - result.numbers["label_agreement"])
    assert checks["macro_f1_drop"]["value"] == pytest.approx(1.0 - result.metrics["macro_f1"])
    assert "FAIL label_agreement" in table([result], parity.columns(ref_metrics))


def test_verify_passes_on_the_export(bert, heldout):
    _, checkpoint, artifact, _ = bert
    assert _verify(artifact, checkpoint, heldout) == 0


def test_verify_catches_a_changed_file(bert, heldout, tmp_path, caplog):
    _, checkpoint, artifact, _ = bert
    copy = _copy(artifact, tmp_path / "art")
    data = bytearray((copy / "model.opt.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.opt.onnx").write_bytes(bytes(data))
    assert _verify(copy, checkpoint, heldout) == 4
    assert "model.opt.onnx" in caplog.text and "sha256" in caplog.text


def test_verify_catches_weights_perturbed_after_export(bert, heldout, tmp_path, caplog):
    import onnx
    from onnx import numpy_helper

    _, checkpoint, artifact, _ = bert
    copy = _copy(artifact, tmp_path / "art")
    model = onnx.load(str(copy / "model.onnx"))
    perturbed = [init for init in model.graph.initializer if "classifier" in init.name]
    assert perturbed
    for init in perturbed:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01 + 0.01, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    _rehash(copy)  # a tamper that also fixed up the hashes: only parity can catch it
    assert _verify(copy, checkpoint, heldout) == 3
    assert "FAIL max_abs_diff" in caplog.text and "fp32" in caplog.text


def test_verify_catches_a_mismatched_tokenizer(bert, heldout, tmp_path, caplog):
    _, checkpoint, artifact, _ = bert
    copy = _copy(artifact, tmp_path / "art")
    doc = json.loads((copy / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    # Shift every ordinary word piece's id: same text, other ids (a different vocabulary).
    doc["model"]["vocab"] = {t: (i + 1000) % len(vocab) if i >= 1000 else i for t, i in vocab.items()}
    (copy / "tokenizer.json").write_text(json.dumps(doc))
    _rehash(copy)
    assert _verify(copy, checkpoint, heldout) == 3
    assert "missed their parity bounds" in caplog.text


def test_real_minilm_fuses_attention_and_reports_float_weights_per_int8_scheme(tmp_path, heldout, caplog):
    """The packaged pretrained MiniLM-L6 (real weights, new 3-label head) through all three steps:
    every INT8 scheme tried reports the operators that still hold float weights, and the served
    scheme's count is the manifest's."""
    import logging

    import torch
    from factories import LABELS, minilm_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deploykit import checkpoint as ckpt
    from deploykit import export
    from deploykit.config import ExportConfig, TrainConfig
    from deploykit.export import quantize

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=3, id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    checkpoint = ckpt.save(model.eval(), AutoTokenizer.from_pretrained(minilm_path()),
                           TrainConfig(data=str(heldout)), {}, tmp_path / "checkpoint")
    caplog.set_level(logging.INFO, logger="deploykit")
    # A random head's near-tied logits miss the target bounds: --quantize static writes the most
    # accurate scheme anyway, and the ladder tries both calibrations (the fallback is off for time).
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), data=str(heldout),
                                       split="all", quantize="static", int8_fallback="off",
                                       allow_parity_failure=True))
    manifest = Manifest.verify(artifact)
    opt, int8 = manifest.variants["opt"], manifest.variants["int8"]
    assert opt.fused_ops["Attention"] == 6 and opt.fused_ops["SkipLayerNormalization"] == 12
    assert opt.fused_ops["EmbedLayerNormalization"] == 1
    for name in ("fp32", "opt"):
        assert manifest.variants[name].servable, manifest.variants[name].parity

    q = int8.quantization
    schemes = {s["scheme"]: s for s in q["selection"]["schemes"]}
    tried = list(schemes) if q["selection"]["met"] else ["static-minmax", "static-entropy"]
    assert list(schemes) == tried and q["scheme"] in schemes
    # 6 layers x (q, k, v, attention output, FFN in, FFN out) + pooler + classifier: all integer;
    # the word, position and token-type embedding tables keep float weights.
    for name, record in schemes.items():
        assert record["float_weight_ops"] == {"Gather": 3}, name
        assert f"int8 scheme {name}: " in caplog.text and "operators with float weights: Gather 3" in caplog.text
    assert q["float_weight_ops"] == quantize.float_weight_ops(artifact / "model.int8.onnx") == {"Gather": 3}
    assert q["quantized_ops"]["integer_MatMul"] >= 6 * 6 + 2
    assert int8.batch_dependence is not None and int8.batch_dependence <= BATCH_INDEPENDENCE_ATOL


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_int8_can_keep_the_first_layers_feed_forward_in_float(build, arch, tmp_path):
    from deploykit.export import quantize

    _, _, artifact, _ = build(arch)
    src = artifact / "model.opt.onnx"
    info = quantize.quantize_dynamic(src, tmp_path / "int8.onnx", False, float_nodes=quantize.ffn_matmuls(src, 1))
    assert len(info["float_nodes"]) == 2 and all("layer.0/" in n for n in info["float_nodes"])
    ops = Counter(n.op_type for n in _graph(tmp_path / "int8.onnx").node)
    assert ops["MatMul"] == 2 and ops["QAttention"] == LAYERS  # attention stays quantized

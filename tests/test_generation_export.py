"""Export of tiny random Llama, Qwen2 and GPT-2 checkpoints with their KV cache: the manifest's
generation fields, the fused and weight-only INT8 graphs, the parity gates, and verify."""

import json
import shutil

import onnx
import pytest

from deploykit import export
from deploykit.config import ExportConfig, VerifyConfig
from deploykit.errors import BadInputError, IntegrityError, ParityError
from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest
from deploykit.tasks.generation.example import CHAT_TEMPLATE
from factories import DECODERS, lm_config, lm_tokenizer, make_lm_checkpoint

# MatMuls with a constant weight per architecture: Llama's 7 projections per layer and its own
# lm_head; Qwen2's tied lm_head becomes constant once the optimizer folds its Transpose; GPT-2's
# Conv1D projections export as Gemm, of which the optimizer turns the attention output and MLP
# ones (and the folded lm_head) into MatMuls.
QUANTIZED = {"llama": 15, "qwen2": 15, "gpt2": 7}


@pytest.mark.parametrize("arch", DECODERS)
def test_manifest_records_the_generation_contract(generation_artifacts, arch):
    checkpoint, artifact = generation_artifacts[arch]
    manifest = Manifest.verify(artifact)
    config = lm_config(arch, len(lm_tokenizer()))
    head = manifest.head
    assert manifest.task == "text-generation" and manifest.name == f"tiny-{arch}"
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    assert (head.cache.layers, head.cache.kv_heads, head.cache.head_size) == (2, kv_heads, 32 // heads)
    assert head.vocab_size == config.vocab_size
    assert (head.eos_token_ids, head.pad_token_id, head.bos_token_id) == ((2,), 0, 1)
    assert head.chat_template == CHAT_TEMPLATE
    assert head.defaults["temperature"] == 0.0 and head.defaults["max_new_tokens"] > 0
    assert manifest.max_length == 256  # the position table, not training's max_length
    assert set(manifest.inputs) == {"input_ids", "attention_mask", "position_ids", *head.cache.past_names()}
    assert list(manifest.variants) == ["fp32", "opt", "int8"]
    doc = json.loads((artifact / "manifest.json").read_text())
    assert doc["cache"] == {"layers": 2, "kv_heads": kv_heads, "head_size": 32 // heads, "dtype": "float32",
                            "past": "past_key_values.{layer}.{kind}", "present": "present.{layer}.{kind}"}
    assert doc["evaluation"]["prompt_column"] == "prompt" and doc["evaluation"]["n"] == 24
    # The graph really holds what the manifest says.
    int8 = onnx.load(str(artifact / "model.int8.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "MatMulNBits" for n in int8.node) == QUANTIZED[arch]
    q = manifest.variants["int8"].quantization
    assert q["bits"] == 8 and q["quantized_ops"]["MatMulNBits"] == QUANTIZED[arch]
    # int8 compute by default (onnxruntime's fast kernels), each row's activations on their own
    assert (q["compute"], q["accuracy_level"], q["activations"]) == ("int8", 4, "int8 per row and block")
    levels = {a.i for n in int8.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    assert manifest.variants["opt"].fused_ops  # SkipLayerNormalization-type fusions at least
    # Every variant's head computes the last position only (generation reads nothing else).
    for name in ("fp32", "opt", "int8"):
        graph = onnx.load(str(artifact / manifest.variants[name].file), load_external_data=False).graph
        logits = next(o for o in graph.output if o.name == "logits")
        assert logits.type.tensor_type.shape.dim[1].dim_value == 1
        assert any(n.op_type == "Slice" and n.name == "deploykit_last_position_out" for n in graph.node)


@pytest.mark.parametrize("arch", DECODERS)
def test_parity_gates_are_recorded_per_variant(generation_artifacts, arch):
    _, artifact = generation_artifacts[arch]
    manifest = Manifest.read(artifact)
    for name in ("fp32", "opt"):
        parity = manifest.variants[name].parity
        # fp32 graphs: every prompt's first 32 greedy tokens equal PyTorch's
        assert parity["token_agreement"] == 1.0 and parity["tokens_compared"] == 32
        assert parity["first_step_max_abs_diff"] < 1e-4 and parity["tokenizer_mismatches"] == 0
        assert manifest.variants[name].servable and parity["passed"]
        assert parity["batch_independence"]["max_abs_diff"] == 0.0  # float rows never see their batch mates
    int8 = manifest.variants["int8"]
    p = int8.parity
    # int8 compute quantizes each row's activations on its own: a prompt's logits do not move
    # with its batch mates, at the prompt step or a cached step (measured, not assumed)
    record = p["batch_independence"]
    assert record["rows"] == 24 and record["mixed_batch_size"] == 8 and record["prompt_tokens"] >= 1
    assert record["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL and int8.batch_independent
    assert p["tokens_compared"] == 16 and p["bounds"] == {"tokens": 16, "min_prompt_agreement": 0.95,
                                                          "max_bleu_drop": 1.0}
    gate = p["token_agreement"] >= 0.95 and p["bleu_drop"] <= 1.0
    assert int8.servable is gate and p["passed"] is gate
    assert {f["check"] for f in p["failures"]} == ({"token_agreement"} if p["token_agreement"] < 0.95 else set()) | (
        {"bleu_drop"} if p["bleu_drop"] > 1.0 else set())
    # A decoder's order is the classifier's: INT8 when it passed its gate (and is batch-independent).
    assert manifest.default_variant == ("int8" if int8.servable else "opt")
    assert set(manifest.reference_metrics) == {"bleu", "chrf", "exact_match", "n"}


def test_batch_independence_catches_activations_scaled_per_batch(generation_artifacts, tmp_path):
    """The check can fail: dynamic INT8 (one activation scale per call, from the whole batch) in
    place of the weight-only graph moves a prompt's logits with its batch mates."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deploykit.tasks.generation.parity import batch_independence
    from deploykit.tasks.generation.runtime import Generator

    _, artifact = generation_artifacts["llama"]
    copy = shutil.copytree(artifact, tmp_path / "copy")
    quantize_dynamic(copy / "model.onnx", copy / "model.int8.onnx", weight_type=QuantType.QInt8)
    manifest = Manifest.read(copy)
    generator = Generator.of_variant(copy, manifest, "int8")
    prompts = [[1, *range(5 + i, 5 + i + 6 + (i % 3))] for i in range(16)]
    assert batch_independence(generator, prompts)["max_abs_diff"] > BATCH_INDEPENDENCE_ATOL
    same = Generator.of_variant(artifact, manifest, "int8")
    assert batch_independence(same, prompts)["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL


def test_float_compute_keeps_float_activations(generation_artifacts, tmp_path):
    """--int8-compute float: the weight-only graph dequantizes its weights (accuracy_level 0)."""
    from deploykit.export.quantize import quantize_weights

    _, artifact = generation_artifacts["qwen2"]
    info = quantize_weights(artifact / "model.opt.onnx", tmp_path / "float.onnx", 32, compute="float")
    assert (info["compute"], info["accuracy_level"], info["activations"]) == ("float", 0, "float")
    graph = onnx.load(str(tmp_path / "float.onnx")).graph
    levels = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels <= {0} and info["quantized_ops"]["MatMulNBits"] == QUANTIZED["qwen2"]


def test_verify_rechecks_the_recorded_prompts(generation_artifacts, tmp_path):
    checkpoint, artifact = generation_artifacts["llama"]
    report = export.verify(VerifyConfig(artifact=str(artifact), checkpoint=str(checkpoint)))
    assert report["rows"]["as_exported"] and report["rows"]["same_as_export"] is True
    assert report["variants"]["fp32"]["parity"]["token_agreement"] == 1.0
    copy = shutil.copytree(artifact, tmp_path / "copy")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx"):
        export.verify(VerifyConfig(artifact=str(copy), checkpoint=str(checkpoint)))


def test_verify_fails_a_servable_variant_against_other_weights(generation_artifacts, tmp_path, translation_csv):
    _, artifact = generation_artifacts["llama"]
    other = make_lm_checkpoint(tmp_path / "other", "llama", translation_csv, seed=7)
    with pytest.raises(ParityError, match="fp32"):
        export.verify(VerifyConfig(artifact=str(artifact), checkpoint=str(other)))


def test_export_exits_3_when_no_variant_passes(tmp_path, translation_csv, monkeypatch):
    from dataclasses import replace

    from deploykit.tasks.generation import export as generation

    checkpoint = make_lm_checkpoint(tmp_path / "ck", "llama", translation_csv)
    cfg = ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), max_eval_samples=4,
                       optimize="none", quantize="none", generation_tokens=4, int8_generation_tokens=4)
    # A manifest whose vocabulary contradicts the graph: parity loads each variant as served and
    # fails its interface, so no variant passes (exit 3) and the artifact says why.
    original = generation.head_of
    monkeypatch.setattr(generation, "head_of", lambda *a: (lambda h, i: (replace(h, vocab_size=h.vocab_size + 1), i))(
        *original(*a)))
    with pytest.raises(ParityError, match="interface"):
        export.run(cfg)
    fp32 = Manifest.read(tmp_path / "art").variants["fp32"]
    assert not fp32.servable and "logits per token" in fp32.parity["failures"][0]["value"]


def test_export_refuses_static_quantization_for_generation(tmp_path, translation_csv):
    checkpoint = make_lm_checkpoint(tmp_path / "ck", "gpt2", translation_csv)
    with pytest.raises(BadInputError, match="weight"):
        export.run(ExportConfig(checkpoint=str(checkpoint), out=str(tmp_path / "art"), quantize="static"))
    assert not (tmp_path / "art").exists()

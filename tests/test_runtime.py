"""The torch-free runtime: integrity checks, variant choice, batching, parity with PyTorch."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import BadInputError, IntegrityError
from deploykit.manifest import Manifest
from deploykit.runtime import Runtime

TEXTS = ["I love this", "terrible, awful day", "ok", "the car drives on the road today " * 5,
         "what a wonderful world", "meh", "x " * 200, "neutral statement about a table"]


@pytest.fixture(scope="module")
def runtime(serve_artifact):
    return Runtime(serve_artifact)


@pytest.fixture()
def copy(serve_artifact, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(serve_artifact, target)
    return target


def test_loads_the_default_variant_and_contract_attributes(runtime, serve_artifact):
    manifest = Manifest.verify(serve_artifact)
    assert runtime.variant == manifest.default_variant and runtime.manifest == manifest
    assert runtime.name == "classifier"
    assert runtime.labels == list(manifest.head.labels)
    assert runtime.max_length == 32
    assert runtime.input_names == list(manifest.inputs)


def torch_reference(checkpoint: Path, texts: list[str], max_length: int = 32):
    """(logits, labels) of the PyTorch checkpoint, the ground truth every variant must match."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**batch).logits.numpy()
    return logits, [model.config.id2label[i] for i in logits.argmax(-1).tolist()]


@pytest.mark.parametrize("variant", ["fp32", "opt"])
def test_matches_the_pytorch_checkpoint(serve_artifact, variant):
    ref, labels = torch_reference(serve_artifact.parent / "checkpoint", TEXTS)
    runtime = Runtime(serve_artifact, variant)
    got = runtime.logits(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert [r["label"] for r in runtime.predict(TEXTS)] == labels


def test_predict_shape_order_and_truncation(runtime):
    results = runtime.predict(TEXTS)
    assert len(results) == len(TEXTS)
    for r in results:
        assert set(r) == {"label", "score", "scores", "truncated"}
        assert list(r["scores"]) == runtime.labels
        assert abs(sum(r["scores"].values()) - 1) < 1e-5
        assert r["score"] == max(r["scores"].values()) and r["scores"][r["label"]] == r["score"]
    assert [r["truncated"] for r in results] == [False, False, False, True, False, False, True, False]


def test_small_budget_splits_batches_and_keeps_order(serve_artifact):
    # fp32: dynamic INT8 quantizes activations per batch, so its scores depend slightly on the
    # batch mates; fp32 results must not.
    runtime = Runtime(serve_artifact, "fp32")
    small = Runtime(serve_artifact, "fp32", max_batch_tokens=40, max_batch_size=3)
    rows = small.tokenize(TEXTS)
    plan = list(small.plan(rows))
    assert sorted(i for b in plan for i in b) == list(range(len(TEXTS)))
    assert len(plan) > 2 and all(len(b) <= 3 for b in plan)
    for batch in plan:  # each batch within budget (rows x longest row), longest first
        lengths = [rows[i].length for i in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert len(batch) == 1 or len(batch) * lengths[0] <= 40
    one_by_one = np.concatenate([runtime.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(small.logits(TEXTS), one_by_one, atol=1e-5)
    assert small.predict([]) == []


def test_encode_pads_to_longest_row(runtime):
    feeds = runtime.encode(["a", "a b c d"])
    assert list(feeds) == runtime.input_names
    assert feeds["input_ids"].shape == (2, 6)
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert feeds["input_ids"][0, 3:].tolist() == [runtime.pad_id] * 3


def mark_unservable(artifact: Path, variant: str) -> None:
    """Mark a variant not servable, as export does when it fails its parity gate."""
    manifest = Manifest.read(artifact)
    variants = {**manifest.variants, variant: replace(manifest.variants[variant], servable=False)}
    replace(manifest, variants=variants).write(artifact)


def test_refuses_unservable_and_unknown_variants_and_providers(serve_artifact, copy):
    mark_unservable(copy, "int8")
    with pytest.raises(BadInputError, match="not servable"):
        Runtime(copy, "int8")
    with pytest.raises(BadInputError, match="choose one of fp32, opt, int8"):
        Runtime(serve_artifact, "fp16")
    with pytest.raises(BadInputError, match="CUDAExecutionProvider"):
        Runtime(serve_artifact, providers=["CUDAExecutionProvider"])


def test_refuses_a_tampered_file(copy):
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx does not match its sha256"):
        Runtime(copy)


def test_refuses_truncated_missing_and_unlisted_files(copy):
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json has 2 bytes"):
        Manifest.verify(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json is missing"):
        Manifest.verify(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["tokenizer.json"]
    manifest["files"]["../escape"] = {"bytes": 1, "sha256": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="does not list tokenizer.json"):
        Manifest.verify(copy)


def test_refuses_what_is_not_an_artifact(tmp_path, copy):
    with pytest.raises(BadInputError, match="not a deploykit artifact"):
        Runtime(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["../escape"] = {"bytes": 1, "sha256": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="outside the artifact"):
        Manifest.verify(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        Manifest.verify(copy)


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'datasets', 'optimum', 'sklearn'):
            raise ImportError('blocked import of ' + name)
sys.meta_path.insert(0, Block())
"""


def test_runtime_never_imports_torch(serve_artifact):
    code = BLOCKER + f"""
from deploykit.runtime import Runtime
print(Runtime({str(serve_artifact)!r}).predict(['hello'])[0]['label'])
assert not any(m.split('.')[0] in ('torch', 'transformers', 'datasets') for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("negative", "neutral", "positive")


def test_warns_when_serving_with_another_onnxruntime(serve_artifact, copy, caplog):
    import onnxruntime

    manifest = Manifest.read(copy)
    assert manifest.provenance["onnxruntime"] == onnxruntime.__version__
    with caplog.at_level("WARNING", logger="deploykit.session"):
        Runtime(copy, "fp32")
    assert "exported and verified with onnxruntime" not in caplog.text
    replace(manifest, provenance={**manifest.provenance, "onnxruntime": "1.0.0"}).write(copy)
    with caplog.at_level("WARNING", logger="deploykit.session"):
        Runtime(copy, "fp32")
    assert f"onnxruntime 1.0.0 but is served with {onnxruntime.__version__}" in caplog.text


def test_single_callers_spin_and_the_server_does_not(serve_artifact, tmp_path, monkeypatch):
    """Idle intra-op threads busy-wait only for a single caller (predict, bench offline), which
    calls back to back; the server's sessions (the default) never spin."""
    from deploykit import predict
    from deploykit.config import PredictConfig
    from deploykit.tasks.classification import bench
    from deploykit.tasks.classification import predict as classifier_predict

    def spinning(runtime: Runtime) -> str:
        return runtime.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(Runtime(serve_artifact)) == "0"
    assert spinning(Runtime(serve_artifact, spin=True)) == "1"
    made: list[Runtime] = []

    class Recording(Runtime):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(classifier_predict, "Runtime", Recording)
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "hello"}\n')
    predict.run(PredictConfig(artifact=str(serve_artifact), data=str(data), out=str(tmp_path / "out.jsonl")))
    monkeypatch.setattr(bench, "Runtime", Recording)
    bench.ENGINES["runtime"]({"artifact": str(serve_artifact), "variant": None, "threads": 1,
                                 "max_batch_size": 8, "max_length": 32})
    assert [spinning(r) for r in made] == ["1", "1"]

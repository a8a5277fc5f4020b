"""Multi-label text classification (issue 26): data, thresholds, the manifest's head and its schema
version, parity with the transformers pipeline (sigmoid), evaluation, predict, and the real server's
/classify and v2 routes. One trained and exported tiny model (``multi_label_run``) serves them all."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_serve import ROOT, http, post_json, start_server, stop_server

from deploykit import manifest as manifest_module
from deploykit.config import DataConfig
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.tasks.classification import data
from deploykit.tasks.classification.head import Classification

TEXTS = ["we saw the flight and a goal", "the road today", "pizza at the airport hotel", "dinner"]


def _write(path, rows, header=("text", "topics")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- data ---------------------------------------------------------------------------------------

def test_label_cells_lists_separated_strings_and_empty_rows(tmp_path):
    rows = [{"text": f"row {i}", "topics": labels} for i, labels in
            enumerate([["a", "b"], [], ["b"], ["a"], ["a", "b"], [], ["b"], ["a"], ["b"], ["a"]] * 3)]
    jsonl = tmp_path / "lists.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = data.load_splits(DataConfig(data=str(jsonl), label_column="topics", problem_type="multi-label"))
    assert splits.label_names == ["a", "b"]
    every = splits.train.labels + splits.validation.labels + splits.test.labels
    assert sorted(every) == sorted([tuple(["a", "b"].index(n) for n in r["topics"]) for r in rows])
    assert () in every  # a row without labels is allowed
    separated = _write(tmp_path / "sep.csv", [(f"row {i}", ";".join(r["topics"])) for i, r in enumerate(rows)])
    again = data.load_splits(DataConfig(data=str(separated), label_column="topics", problem_type="multi-label",
                                        label_separator=";"))
    assert again.label_names == ["a", "b"] and sorted(again.train.labels) == sorted(splits.train.labels)


def test_unknown_label_names_the_row_or_is_skipped(tmp_path):
    file = _write(tmp_path / "new.csv", [("one", "a"), ("two", "a|zzz"), ("three", "")])
    dcfg = DataConfig(data=str(file), label_column="topics", problem_type="multi-label", label_separator="|")
    with pytest.raises(BadInputError, match=r"row 2 has label\(s\) \['zzz'\].*--skip-bad-rows") as info:
        data.held_out(dcfg, "all", ["a", "b"])
    assert info.value.exit_code == 2
    rows, _ = data.held_out(DataConfig(**{**vars(dcfg), "skip_bad_rows": True}), "all", ["a", "b"])
    assert rows.texts == ["one", "three"] and rows.labels == [(0,), ()]


def test_an_empty_label_list_where_min_labels_forbids_one_names_the_row_or_is_skipped(tmp_path):
    from deploykit.errors import ConfigError

    rows = [(f"text {i}", "a" if i % 2 else "a|b") for i in range(30)]
    rows[7] = ("the empty one", "")
    file = _write(tmp_path / "min.csv", rows)
    dcfg = dict(data=str(file), label_column="topics", problem_type="multi-label", label_separator="|")
    assert len(data.load_splits(DataConfig(**dcfg)).train) + 1 > 20  # 0 (the default) allows it
    with pytest.raises(BadInputError, match=r"min.csv: row 8 has 0 label\(s\) in column 'topics' and --min-labels is 1"
                                            r".*--skip-bad-rows") as info:
        data.load_splits(DataConfig(**dcfg, min_labels=1))
    assert info.value.exit_code == 2
    with pytest.raises(BadInputError, match=r"row 8 has 0 label\(s\)"):
        data.held_out(DataConfig(**dcfg, min_labels=1), "all", ["a", "b"])
    kept, _ = data.held_out(DataConfig(**dcfg, min_labels=1, skip_bad_rows=True), "all", ["a", "b"])
    assert len(kept) == 29 and "the empty one" not in kept.texts and () not in kept.labels
    splits = data.load_splits(DataConfig(**dcfg, min_labels=2, skip_bad_rows=True))
    assert all(len(labels) == 2 for labels in splits.train.labels + splits.test.labels)
    with pytest.raises(ConfigError, match="--min-labels: above 1 needs --problem-type multi-label"):
        DataConfig(data="x", min_labels=2)


def test_thresholds_option_is_checked():
    from deploykit.config import TrainConfig
    from deploykit.errors import ConfigError

    with pytest.raises(ConfigError, match="--thresholds"):
        TrainConfig(data="x", model="y", problem_type="multi-label", thresholds="1.5")


def test_tuned_thresholds_maximise_each_labels_f1():
    from deploykit.tasks.classification.scoring import tune_thresholds

    gold = np.array([[1, 0], [1, 0], [0, 0], [0, 1]])
    probs = np.array([[0.30, 0.1], [0.25, 0.2], [0.10, 0.3], [0.2, 0.9]])
    t = tune_thresholds(gold, probs)
    assert 0.2 < t[0] <= 0.25 and 0.3 < t[1] <= 0.9  # every gold row above, every other below


# --- the checkpoint and the manifest ---------------------------------------------------------------

def test_checkpoint_and_manifest_record_problem_type_and_thresholds(multi_label_run):
    _, checkpoint, artifact = multi_label_run
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    doc = json.loads((artifact / "manifest.json").read_text())
    assert doc["schema_version"] == 2 and doc["problem_type"] == "multi_label_classification"
    assert doc["thresholds"] == config["thresholds"] and len(doc["thresholds"]) == len(doc["labels"]) == 3
    head = Manifest.verify(artifact).head_as(Classification)
    assert head.multi_label and head.activation == "sigmoid"
    # transformers loads the checkpoint as multi-label (its own loss would be BCE).
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(checkpoint).problem_type == "multi_label_classification"


def test_an_older_reader_and_a_version_1_manifest_refuse_the_multi_label_head(multi_label_run, tmp_path, monkeypatch):
    _, _, artifact = multi_label_run
    doc = json.loads((artifact / "manifest.json").read_text())
    with monkeypatch.context() as m:  # what a deploykit of schema 1 reads
        m.setattr(manifest_module, "READABLE_VERSIONS", (1,))
        with pytest.raises(BadInputError, match="schema_version 2; this deploykit reads 1"):
            Manifest.from_json(doc)
    with pytest.raises(BadInputError, match="'schema_version' is 1, but a multi_label_classification head needs"):
        Manifest.from_json({**doc, "schema_version": 1})
    with pytest.raises(BadInputError, match="'thresholds' must list one probability"):
        Manifest.from_json({**doc, "thresholds": doc["thresholds"][:2]})
    single = {k: v for k, v in doc.items() if k not in ("problem_type", "thresholds")}
    # A single-label head is written in the version-1 shape, which every deploykit reads.
    assert Manifest.from_json({**single, "schema_version": 1}).head.to_json() == {"labels": doc["labels"],
                                                                                   "output": "logits"}


# --- parity ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(multi_label_run):
    from deploykit.runtime import Runtime

    return Runtime(multi_label_run[2], "fp32", threads=1)


def test_fp32_probabilities_match_the_transformers_pipeline_with_sigmoid(multi_label_run, runtime):
    from transformers import pipeline

    _, checkpoint, _ = multi_label_run
    pipe = pipeline("text-classification", model=str(checkpoint), function_to_apply="sigmoid", top_k=None,
                    device="cpu")
    expected = pipe(TEXTS)
    got = runtime.predict(TEXTS)
    for want, answer in zip(expected, got):
        assert {w["label"] for w in want} == set(answer["scores"])
        for w in want:
            assert abs(answer["scores"][w["label"]] - w["score"]) <= 1e-4
    thresholds = dict(zip(runtime.labels, runtime.decisions.thresholds))
    for answer in got:  # the labels over their own thresholds, most probable first
        over = sorted((label for label, p in answer["scores"].items() if p >= thresholds[label]),
                      key=lambda label: -answer["scores"][label])
        assert answer["labels"] == over and set(answer) == {"labels", "scores", "truncated"}


def test_int8_is_judged_per_label_and_batch_independent(multi_label_run, runtime):
    _, checkpoint, artifact = multi_label_run
    manifest = Manifest.verify(artifact)
    int8 = manifest.variants["int8"]
    assert int8.batch_independent  # static INT8: a row's scores do not move with its batch mates
    assert set(int8.metrics) == {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"}
    assert set(manifest.reference_metrics) == set(int8.metrics)
    # per-label agreement >= 0.99 and micro-F1 within half a point (--int8-max-micro-f1-drop)
    assert int8.parity["bounds"] == {"min_label_agreement": 0.99, "max_macro_f1_drop": 0.005}
    # the recorded agreement is per (row, label) decision, not top-1
    from deploykit import checkpoint as ckpt
    from deploykit.data import rebuild_config
    from deploykit.runtime import Runtime

    rows, _ = data.held_out(rebuild_config(ckpt.train_config(checkpoint)), "test", list(runtime.labels))
    quantized = Runtime.of_variant(artifact, manifest, "int8")
    a, b = runtime.logits(rows.texts), quantized.logits(rows.texts)
    assert abs(runtime.decisions.agreement(a, b) - int8.parity["label_agreement"]) < 1e-9


# --- evaluation and predict (the CLI) ---------------------------------------------------------------

def test_evaluate_and_predict_through_the_cli(multi_label_run, tmp_path):
    csv_file, checkpoint, artifact = multi_label_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    inputs = _write(tmp_path / "in.csv", [(t,) for t in TEXTS], header=("text",))
    commands = [["evaluate", str(checkpoint), "--out", str(tmp_path / "eval")],
                ["predict", str(artifact), "--data", str(inputs), "--out", str(tmp_path / "pred.jsonl")]]
    procs = [subprocess.Popen([sys.executable, "-m", "deploykit", *c], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "per_class",
                "per_label_confusion", "by_length"):
        assert key in metrics
    confusion = metrics["per_label_confusion"]["travel"]
    assert confusion["tp"] + confusion["fn"] == metrics["per_class"]["travel"]["support"]
    errors = [json.loads(line) for line in (tmp_path / "eval" / "errors.jsonl").read_text().splitlines()]
    assert all(isinstance(e["gold"], list) and e["gold"] != e["predicted"] for e in errors)
    assert [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(predicted) == len(TEXTS) and all("labels" in p and len(p["scores"]) == 3 for p in predicted)


# --- serving ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(multi_label_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi-label-server")
    proc, url = start_server(multi_label_run[2], folder, "--variant", "fp32")
    yield url
    stop_server(proc)


def test_classify_returns_labels_over_thresholds_and_every_score(server, runtime):
    status, body = post_json(server + "/classify", {"texts": TEXTS})
    assert status == 200
    expected = runtime.predict(TEXTS)
    assert [b["labels"] for b in body] == [e["labels"] for e in expected]
    for got, want in zip(body, expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    status, body = post_json(server + "/classify", {"texts": []})
    assert status == 400 and "texts" in json.dumps(body)
    # the rerank routes exist for text-pair models only
    for route in ("/rerank", "/v1/rerank"):
        status, body = post_json(server + route, {"query": "q", "texts": ["a"], "documents": ["a"]})
        assert status == 404 and "text-pair models only" in body["error"]


def test_v2_gives_bytes_labels_and_fp32_scores(server, runtime):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    meta = client.get_model_metadata("topics")
    assert [o["name"] for o in meta["outputs"]] == ["LABELS", "SCORES"]
    text = httpclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=True)
    result = client.infer("topics", [text], outputs=[httpclient.InferRequestedOutput("LABELS"),
                                                     httpclient.InferRequestedOutput("SCORES")])
    expected = runtime.predict(TEXTS)
    labels = [json.loads(x.decode() if isinstance(x, bytes) else x) for x in result.as_numpy("LABELS")]
    assert labels == [e["labels"] for e in expected]
    want = np.array([[e["scores"][label] for label in runtime.labels] for e in expected], dtype=np.float32)
    np.testing.assert_allclose(result.as_numpy("SCORES"), want, atol=1e-5)
    client.close()
    # LABEL is a single-label model's output: asking a multi-label one for it is a 400 naming the choices
    status, body, _ = http(server + "/v2/models/topics/infer", json.dumps({
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
        "outputs": [{"name": "LABEL"}]}).encode(), {"Content-Type": "application/json"})
    assert status == 400 and b"LABELS" in body


@pytest.mark.slow
def test_real_tritonserver_serves_labels_through_the_runtime_model(multi_label_run, runtime, tmp_path, pytriton_venv):
    """A multi-label head's repository is NAME alone, the runtime's Python model (the ensemble's softmax
    postprocess would be wrong): LABELS (a JSON list per row) and SCORES, from a real tritonserver
    started with the README's command line, through tritonclient."""
    import tritonclient.http as httpclient

    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo
    from test_triton import readme_server

    repo = triton_repo.run(TritonConfig(artifact=str(multi_label_run[2]), out=str(tmp_path / "repo"), variant="fp32",
                                        max_batch_size=8, threads=1))
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "topics"]
    tensor = httpclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=np.object_).reshape(-1, 1))
    with readme_server(pytriton_venv, repo, "topics") as client:
        result = client.infer("topics", [tensor])
    expected = runtime.predict(TEXTS)
    assert [json.loads(x) for x in result.as_numpy("LABELS").reshape(-1)] == [e["labels"] for e in expected]
    want = [[e["scores"][label] for label in runtime.labels] for e in expected]
    np.testing.assert_allclose(result.as_numpy("SCORES"), want, atol=1e-6)

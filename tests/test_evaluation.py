"""deploykit evaluate: metrics against scikit-learn, error cases, length buckets, bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deploykit import evaluation
from deploykit.tasks.classification import data
from deploykit.config import DataConfig, EvalConfig
from deploykit.errors import BadInputError
from factories import LABELS, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, learnable_csv):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", data=str(learnable_csv), seed=3)


def _reference_predictions(ckpt, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    import torch

    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    with torch.no_grad():
        logits = torch.cat([model(**tok(texts[i:i + 1], return_tensors="pt")).logits for i in range(len(texts))])
    return logits.softmax(-1).numpy()


def test_metrics_errors_and_buckets(ckpt, learnable_csv, tmp_path):
    from sklearn.metrics import f1_score

    out = evaluation.run(EvalConfig(checkpoint=str(ckpt), split="test", out=str(tmp_path / "eval")))
    assert sorted(os.listdir(out)) == ["confusion.png", "errors.jsonl", "length.png", "metrics.json", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    # The same held-out rows as the split the checkpoint was trained with.
    test = data.load_splits(DataConfig(data=str(learnable_csv))).test
    probs = _reference_predictions(ckpt, test.texts)
    predicted = probs.argmax(-1)
    assert metrics["n"] == len(test) == 30
    assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == np.array(test.labels))))
    assert metrics["macro_f1"] == pytest.approx(f1_score(test.labels, predicted, average="macro", zero_division=0))
    assert set(metrics["per_class"]) == set(LABELS)
    assert sum(c["support"] for c in metrics["per_class"].values()) == 30
    assert sum(b["n"] for b in metrics["by_length"]) == 30
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == int((predicted != np.array(test.labels)).sum())
    assert all(e["gold"] != e["predicted"] for e in errors)
    confidences = [e["confidence"] for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert set(errors[0]) == {"text", "gold", "predicted", "confidence"}
    report = (out / "report.md").read_text()
    assert f"{metrics['macro_f1']:.4f}" in report and "By input length" in report


def test_slice_column_reports_every_metric_per_value(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    from factories import learnable_rows

    rows = learnable_rows(300)
    csv_file = tmp_path / "sliced.csv"
    csv_file.write_text("text,label,source\n" + "".join(f"{t},{l},{'forum' if i % 4 else 'news'}\n"
                                                         for i, (t, l) in enumerate(rows)))
    ck = make_checkpoint(tmp_path / "ck", data=str(csv_file), seed=3)
    out = evaluation.run(EvalConfig(checkpoint=str(ck), split="test", slice_column="source", out=str(tmp_path / "e")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_slice"]) == {"forum", "news"} and metrics["slice_column"] == "source"
    split = data.load_splits(DataConfig(data=str(csv_file)), slice_column="source").test
    predicted = _reference_predictions(ck, split.texts).argmax(-1)
    for value, m in metrics["by_slice"].items():
        index = [i for i, s in enumerate(split.slices) if s == value]
        gold, pred = [split.labels[i] for i in index], predicted[index]
        assert m["n"] == len(index)
        assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    assert "## By source" in (out / "report.md").read_text()
    with pytest.raises(BadInputError, match="no slice column 'region'"):
        evaluation.run(EvalConfig(checkpoint=str(ck), slice_column="region", out=str(tmp_path / "e2")))


def test_split_all_scores_every_row(ckpt, learnable_csv, tmp_path):
    out = evaluation.run(EvalConfig(checkpoint=str(ckpt), data=str(learnable_csv), split="all", out=str(tmp_path / "all")))
    assert json.loads((out / "metrics.json").read_text())["n"] == 300


def test_length_buckets_split_by_tokens():
    from deploykit.tasks.classification.evaluate import length_buckets

    buckets = length_buckets([3, 20, 20, 100], [0, 1, 1, 2], [0, 1, 0, 2], LABELS, max_length=128)
    assert [(b["tokens"], b["n"], b["accuracy"]) for b in buckets] == [("0-15", 1, 1.0), ("16-31", 2, 0.5), ("64-128", 1, 1.0)]


def test_bad_checkpoint_is_a_usage_error(tmp_path, learnable_csv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "deploykit", "evaluate", str(tmp_path), "--out", str(tmp_path / "e")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "no config.json" in done.stderr
    assert not (tmp_path / "e").exists()
    (tmp_path / "bad.csv").write_text("text,label\nhello,surprise\n")
    ck = make_checkpoint(tmp_path / "ck", data=str(learnable_csv))
    done = subprocess.run([sys.executable, "-m", "deploykit", "evaluate", str(ck), "--data", str(tmp_path / "bad.csv"),
                           "--split", "all", "--out", str(tmp_path / "e")], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "surprise" in done.stderr

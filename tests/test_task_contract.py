"""The task contract, for every registered task: its example (``example.py`` in the task's folder)
goes through train -> evaluate -> export -> verify -> predict -> serve, and each stage keeps its
promises. A new task is covered by registering it; ``tests/lengthtask`` (a third task, registered
from here through ``DEPLOYKIT_TASKS``) proves that a task is one folder and one ``register`` call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit import tasks
from deploykit.errors import ConfigError, IntegrityError
from deploykit.manifest import Manifest
from fuzz_bodies import fuzz, json_case, schemathesis_no_5xx
from test_serve import http, post_json, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
TASKS = tasks.names()
FUZZ_EXAMPLES = 300  # per task, on top of the routes' own fuzz (tests/test_fuzz_routes.py)
# The processes this test starts register the test task as a user's plugin would.
PLUGIN_ENV = {"DEPLOYKIT_TASKS": "lengthtask",
              "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}


def test_the_third_task_is_registered_from_its_folder():
    assert "text-length" in TASKS and tasks.get("text-length").package == "lengthtask"
    assert {"text-classification", "text-generation"} <= set(TASKS)


@pytest.fixture(scope="module", params=TASKS)
def run(request, tmp_path_factory):
    """The task's example trained, evaluated, exported: {task, example, root, checkpoint, eval, artifact}."""
    from deploykit import evaluation, export, train
    from deploykit.config import EvalConfig, ExportConfig, TrainConfig

    task = tasks.get(request.param)
    example = task.part("example")
    root = tmp_path_factory.mktemp(request.param)
    data = example.data(root / "data.csv")
    pretrained = example.pretrained(root / "pretrained")
    checkpoint = train.run(TrainConfig(data=str(data), model=str(pretrained), out=str(root / "run"), **example.TRAIN))
    evaluated = evaluation.run(EvalConfig(checkpoint=str(checkpoint), out=str(root / "eval"), max_errors=5))
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"), name="contract",
                                       **example.EXPORT))
    return {"task": task, "example": example, "root": root, "checkpoint": checkpoint, "eval": evaluated,
            "artifact": artifact}


def test_train_writes_a_checkpoint_of_the_task(run):
    checkpoint, task = run["checkpoint"], run["task"]
    assert {"config.json", "model.safetensors", "deploykit.yaml", "metrics.json"} <= {p.name for p in checkpoint.iterdir()}
    assert tasks.checkpoint_task(checkpoint) == task.name
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert metrics["metric"] == task.metrics[0] and task.metrics[0] in metrics
    lines = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} <= {line["type"] for line in lines}


def test_evaluate_writes_metrics_report_and_worst_cases(run):
    from deploykit import evaluation

    out = run["eval"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["checkpoint"] == str(run["checkpoint"]) and metrics["n"] > 0
    assert (out / "report.md").read_text().strip() and (out / "errors.jsonl").is_file()
    assert evaluation.summary(out).endswith(f"-> {out}/report.md")


def test_export_writes_a_verified_artifact_with_the_tasks_head(run):
    task, artifact = run["task"], run["artifact"]
    manifest = Manifest.verify(artifact)
    assert manifest.task == task.name and type(manifest.head) is task.head()
    assert manifest.name == "contract" and manifest.variants[manifest.default_variant].servable
    for variant in manifest.variants.values():
        assert isinstance(variant.parity["passed"], bool) and variant.parity["passed"] == variant.servable
        assert variant.batch_dependence is not None  # every task measures batch independence
    assert manifest.evaluation.n > 0 and manifest.evaluation.columns
    assert {"onnxruntime", "opset", "checkpoint_sha256", "data_sha256"} <= set(manifest.provenance)


def test_verify_rechecks_the_recorded_rows_and_refuses_a_changed_file(run, tmp_path):
    from deploykit import export
    from deploykit.config import VerifyConfig

    report = export.verify(VerifyConfig(artifact=str(run["artifact"]), checkpoint=str(run["checkpoint"])))
    assert report["rows"]["as_exported"] and report["rows"]["same_as_export"] is True
    copy = shutil.copytree(run["artifact"], tmp_path / "copy")
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        export.verify(VerifyConfig(artifact=str(copy), checkpoint=str(run["checkpoint"])))


def test_predict_scores_every_row_in_order_through_the_cli(run, tmp_path):
    example = run["example"]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(t if isinstance(t, dict) else {"text": t}) + "\n" for t in example.INPUTS))
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "deploykit", "predict", str(run["artifact"]), "--data", str(data),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **PLUGIN_ENV})
    assert done.returncode == 0, done.stderr[-2000:]
    # Its log is a pipe here: plain progress lines, no carriage-return frames (deploykit.progress).
    assert "\r" not in done.stderr and "deploykit.progress: predict:" in done.stderr, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(len(example.INPUTS)))
    assert all(set(example.PREDICTION_KEYS) <= set(r) for r in rows)


def test_serve_answers_the_tasks_route_and_refuses_bad_bodies(run, tmp_path):
    example = run["example"]
    proc, url = start_server(run["artifact"], tmp_path, env=PLUGIN_ENV,
                             argv=[sys.executable, "-m", "deploykit", "serve", str(run["artifact"]), "--threads", "1"])
    try:
        route, body = example.request(example.INPUTS)
        status, answer = post_json(url + route, body)
        assert status == 200, answer
        assert example.answers(answer)
        status, _ = post_json(url + route, b"{not json")
        assert 400 <= status < 500
        status, answer = post_json(url + route, body)  # still serving after a bad request
        assert status == 200
        docs = json.loads(http(url + "/docs.json")[1])
        assert route in docs["paths"]
        assert http(url + "/metrics")[0] == 200
        # Every task's route is fuzzed as it lands: its example's request mutated at 1-3 places
        # (no 5xx, JSON refusals), and schemathesis over the routes /docs.json documents.
        statuses = fuzz(url, json_case(route, body), FUZZ_EXAMPLES)
        assert statuses.get(200, 0) and statuses.get(400, 0), statuses
        assert schemathesis_no_5xx(url, max_examples=5)
        status, answer = post_json(url + route, body)
        assert status == 200 and example.answers(answer)
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        stop_server(proc)


@pytest.mark.parametrize("name", TASKS)
def test_the_tasks_serving_side_never_imports_torch(name):
    """head, runtime and serve of every task import without torch, transformers or datasets."""
    from test_runtime import BLOCKER

    task = tasks.get(name)
    code = BLOCKER + f"""
from deploykit import tasks
task = tasks.get({name!r})
for part in ("head", "runtime", "serve", "predict"):
    task.part(part)
import deploykit.serve.service
assert not any(m.split('.')[0] in ('torch', 'transformers', 'datasets') for m in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **PLUGIN_ENV})
    assert done.returncode == 0 and done.stdout.strip() == "ok", (task, done.stderr[-2000:])


def _another_value(f: dataclasses.Field):
    """A valid value of an option other than its default."""
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != f.default)
    if isinstance(f.default, bool):
        return not f.default
    if isinstance(f.default, (int, float)):
        return f.default + 1
    if f.name == "thresholds":  # a probability
        return "0.5"
    return "2,3" if f.name.endswith("edges") else "another"


@pytest.mark.parametrize("name", TASKS)
def test_another_tasks_option_is_refused_by_its_flag(name):
    """Every option a task declares appears in the stage's config; set for another task, it is refused."""
    from deploykit.config import TrainConfig, check_task

    owned = [f for f in dataclasses.fields(TrainConfig) if name in f.metadata.get("tasks", ())]
    others = [t for t in TASKS if t != name]
    for f in owned:
        cfg = dataclasses.replace(TrainConfig(task=name), **{f.name: _another_value(f)})
        for other in others:
            if other not in f.metadata["tasks"]:
                with pytest.raises(ConfigError, match="--" + f.name.replace("_", "-")):
                    check_task(cfg, other, f"--task is {other}")


@pytest.fixture(scope="module")
def local_ray():
    """A private single-node Ray in this process (conftest set its token), whose workers register
    the test task too."""
    import ray

    ray.init(num_cpus=2, object_store_memory=100_000_000, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": PLUGIN_ENV})
    yield ray
    ray.shutdown()


def test_the_ray_engine_scores_through_the_same_task_hooks(run, local_ray, tmp_path):
    """deploykit.scale.ray.score builds the task's own predict.Scorer in an actor: every task gets
    the Ray engine with no code of its own, and answers as the local engine does."""
    import ray.data

    from deploykit import predict
    from deploykit.config import PredictConfig
    from deploykit.scale.ray import score

    example = run["example"]
    # A row's text as the task's text_source reads it from a file (a question and its context: the
    # pair of their texts).
    inputs = [t if isinstance(t, dict) else {"text": t} for t in example.INPUTS]
    source = run["task"].part("predict").text_source(PredictConfig(artifact=str(run["artifact"]), data="-", out="-"))
    texts = [tuple(source.text(r[c]) for c, _ in source.columns()) for r in inputs]
    rows = [{"text": list(t) if source.more else t[0], "row": i} for i, t in enumerate(texts)]
    scored = score(ray.data.from_items(rows), str(run["artifact"]), key_column="row", workers=1, batch_rows=2,
                   allow_batch_dependent=True).take_all()
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(t if isinstance(t, dict) else {"text": t}) + "\n" for t in example.INPUTS))
    local = predict.run(PredictConfig(artifact=str(run["artifact"]), data=str(data), out=str(tmp_path / "out.jsonl"),
                                      chunk_size=len(rows)))
    by_row = {r["row"]: r for r in map(json.loads, local.read_text().splitlines())}
    assert sorted(r["row"] for r in scored) == sorted(by_row) == list(range(len(rows)))
    for r in scored:
        assert set(r) == set(by_row[r["row"]]) - {"source"} and set(example.PREDICTION_KEYS) <= set(r)

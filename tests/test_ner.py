"""token-classification end to end on a tiny BERT that learns a few names in seconds, trained and exported
through the CLI on a new user's word-level CSV (a span-level JSONL file is its test file): windows and their
merge (an entity across a window edge comes back once, with its offsets), parity with the
transformers pipeline span for span, evaluation of a separate test file, predict, the real server
(/ner, the v2 route with tritonclient, bad input), the Triton repository on a real tritonserver,
Kubernetes and benchmarks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deploykit.manifest import Manifest
from deploykit.tasks.token_classification.head import AGGREGATIONS
from deploykit.tasks.token_classification.runtime import Runtime
from test_serve import http, post_json, start_server, stop_server
from test_triton import readme_server

ROOT = Path(__file__).resolve().parents[1]
FILLER = ["road", "sun", "tree", "we", "saw", "it", "today", "car", "blue", "quiet", "night", "green", "house",
          "met", "in", "drove", "to", "then"]
NAMES = {"LOC": ["New York", "Paris", "Oslo"], "PER": ["Ann Lee", "Bob"]}
MAX_LENGTH, STRIDE = 16, 4  # windows of 14 content tokens, each starting 10 tokens after the last


def learnable_rows(n: int, seed: int = 0) -> list[dict]:
    """Filler words with planted names: a tiny model learns name -> type from the tokens alone."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        # Every fifth row is names only: a text whose every word is an entity is in the data too.
        words = rng.sample(FILLER, rng.randint(3, 8)) if i % 5 else [""] * rng.randint(2, 4)
        text, entities = "", []
        for k, word in enumerate(words):
            if k == len(words) // 2 or not word:
                kind = rng.choice(sorted(NAMES))
                name = rng.choice(NAMES[kind])
                entities.append({"start": len(text), "end": len(text) + len(name), "label": kind})
                text += name + " "
            if word:
                text += word + " "
        rows.append({"text": text.strip(), "entities": entities, "part": "a" if i % 2 else "b"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def word_level(row: dict) -> tuple[list[str], list[str]]:
    """A span-level learnable row as CoNLL-style words and IOB2 tags (its words are split at spaces)."""
    words, tags, end = [], [], 0
    for word in row["text"].split(" "):
        start = row["text"].index(word, end)
        end = start + len(word)
        kind = [(e["label"], e["start"] == start) for e in row["entities"] if e["start"] <= start < e["end"]]
        words.append(word)
        tags.append(f"{'B' if kind[0][1] else 'I'}-{kind[0][0]}" if kind else "O")
    return words, tags


def write_word_level(path: Path, rows: list[dict]) -> Path:
    """A new user's CoNLL-shaped CSV: space-separated tokens and tags, and a document column."""
    import csv

    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["words", "labels", "doc"])
        for i, row in enumerate(rows):
            words, tags = word_level(row)
            out.writerow([" ".join(words), " ".join(tags), f"d{i // 3}"])
    return path


def cli(*args: str) -> str:
    """``deploykit ARGS`` as a user runs it; its output (it must succeed)."""
    done = subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, (args[0], done.stderr[-3000:])
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{root, data, test, checkpoint, artifact}: a tiny BERT trained through the CLI on a word-level CSV
    (learnable rows; --group-column), exported (fp32, fused); ``test`` is a span-level JSONL file."""
    from deploykit.tasks.token_classification import example

    root = tmp_path_factory.mktemp("ner")
    data = write_word_level(root / "train.csv", learnable_rows(400))
    test = write_jsonl(root / "test.jsonl", learnable_rows(40, seed=7))
    run, artifact = root / "run", root / "artifact"
    cli("train", "--task", "token-classification", "--data", str(data), "--tokens-column", "words", "--tags-column",
        "labels", "--group-column", "doc", "--model", str(example.pretrained(root / "pretrained")), "--out", str(run),
        "--max-length", str(MAX_LENGTH), "--stride", str(STRIDE), "--max-steps", "150", "--batch-size", "16",
        "--lr", "5e-3", "--eval-every", "75", "--warmup-ratio", "0")
    cli("export", str(run / "checkpoint"), "--out", str(artifact), "--name", "ner", "--quantize", "none",
        "--aggregation", "simple", "--long-texts", "6")
    return {"root": root, "data": data, "test": test, "checkpoint": run / "checkpoint", "artifact": artifact}


@pytest.fixture(scope="module")
def runtime(trained):
    return Runtime(trained["artifact"], "opt")


def test_training_learned_the_names_and_the_checkpoint_is_a_token_classifier(trained):
    metrics = json.loads((trained["checkpoint"] / "metrics.json").read_text())
    assert metrics["metric"] == "entity_f1" and metrics["entity_f1"] > 0.95, metrics
    config = json.loads((trained["checkpoint"] / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]


def test_an_entity_across_a_window_edge_comes_back_once_with_its_offsets(runtime):
    # 13 filler tokens, then "new" as the 14th and last content token of window 0; window 1 (10
    # tokens later) holds "new york" whole: the longer entity wins the merge.
    text = " ".join(FILLER[:13]) + " New York " + " ".join(FILLER[:12])
    rows = runtime.tokenize([text])
    assert len(rows) == 3 and rows[0].tokens[-2] == "new" and "york" not in rows[0].tokens
    start = text.index("New York")
    for strategy in ("simple", "first", "average", "max"):
        found = runtime.predict([text], strategy)[0]
        assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in found] == \
            [("LOC", start, start + 8, "New York")], strategy
    tokens = runtime.predict([text], "none")[0]
    assert [(t["entity"], t["word"], t["index"]) for t in tokens] == [("B-LOC", "New", 14), ("I-LOC", "York", 15)]


def test_entities_past_the_models_length_are_found(runtime):
    text = " ".join(random.Random(3).choices(FILLER, k=120)) + " met Ann Lee in Oslo"
    assert len(runtime.tokenize([text])) > 10
    found = runtime.predict([text], "first")[0]
    assert [(e["entity_group"], text[e["start"]:e["end"]]) for e in found] == [("PER", "Ann Lee"), ("LOC", "Oslo")]


def test_runtime_matches_the_transformers_pipeline_span_for_span(trained, runtime):
    """Every aggregation, long texts of many windows included (the pipeline with stride; none only
    for texts of one window, as the pipeline refuses a stride with none)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from deploykit.tasks.token_classification import parity

    rng = random.Random(5)
    texts = [r["text"] for r in learnable_rows(12, seed=9)]
    texts += [" ".join(rng.choices(FILLER + ["Paris", "Ann Lee", "New York"], k=rng.randint(20, 70))) for _ in range(6)]
    texts += ["Unicode café — Ünïcode Paris ☃ 東京", "a\x07b control\u200b chars Oslo"]
    model = AutoModelForTokenClassification.from_pretrained(trained["checkpoint"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained["checkpoint"])
    reference = parity.pipeline_entities(model, tokenizer, texts, MAX_LENGTH, STRIDE, AGGREGATIONS)
    rows = runtime.tokenize(texts)
    logits = runtime.logits_of(rows)
    for strategy in AGGREGATIONS:
        got = runtime.entities(texts, rows, logits, strategy)
        for text, mine, theirs in zip(texts, got, reference[strategy]):
            if theirs is None:
                continue
            assert [(e.get("entity_group") or e["entity"], e["start"], e["end"], e.get("index")) for e in mine] == \
                [(e.get("entity_group") or e["entity"], e["start"], e["end"], e.get("index")) for e in theirs], (strategy, text)
            assert np.allclose([e["score"] for e in mine], [e["score"] for e in theirs], atol=1e-4)
            assert all(e["word"] == text[e["start"]:e["end"]] for e in mine)


def test_export_records_the_head_and_parity_with_windows(trained):
    manifest = Manifest.verify(trained["artifact"])
    head = manifest.head
    assert (head.aggregation, head.stride, head.tag_scheme) == ("simple", STRIDE, "iob2")
    assert head.entity_types == ("LOC", "PER") and manifest.max_length == MAX_LENGTH
    for name in ("fp32", "opt"):
        parity = manifest.variants[name].parity
        assert parity["passed"] and parity["long_texts"] == 6 and parity["max_score_diff"] <= 1e-4
        assert set(parity["agreement"]) == set(AGGREGATIONS) | {f"long_{s}" for s in AGGREGATIONS if s != "none"}
        assert all(share == 1.0 for share in parity["agreement"].values())
        assert manifest.variants[name].batch_dependence <= 1e-4
    assert manifest.reference_metrics["entity_f1"] > 0.95
    assert manifest.evaluation.columns == {"tokens_column": "words", "tags_column": "labels"}


def test_evaluate_scores_a_separate_file_with_split_all_and_slices(trained, tmp_path):
    # The test file is span-level JSONL; the checkpoint was trained on a word-level CSV.
    from deploykit import evaluation
    from deploykit.config import EvalConfig

    out = evaluation.run(EvalConfig(checkpoint=str(trained["checkpoint"]), data=str(trained["test"]), split="all",
                                    entities_column="entities",
                                    out=str(tmp_path / "eval"), slice_column="part", max_errors=3))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["split"] == "all" and metrics["entity_f1"] > 0.9
    assert set(metrics["per_class"]) == {"LOC", "PER"} and set(metrics["by_slice"]) == {"a", "b"}
    assert metrics["confusion"]["LOC"]["LOC"] > 0 and metrics["by_length"]
    report = (out / "report.md").read_text()
    assert "## Confusion" in report and "## Worst sentences" in report
    assert {p.name for p in out.iterdir()} >= {"confusion.png", "length.png", "errors.jsonl"}


def test_predict_writes_jsonl_spans(trained, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": "we saw Ann Lee in Paris"}, {"text": "quiet night"}])
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "deploykit", "predict", str(trained["artifact"]), "--data", str(data),
                           "--out", str(out), "--aggregation", "first"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [[(e["entity_group"], e["word"]) for e in r["entities"]] for r in rows] == [[("PER", "Ann Lee"), ("LOC", "Paris")], []]
    bad = subprocess.run([sys.executable, "-m", "deploykit", "predict", str(trained["artifact"]), "--data", str(data),
                          "--out", str(out), "--aggregation", "bogus"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--aggregation" in bad.stderr


def test_the_cli_evaluates_verifies_and_predicts_a_word_level_file(trained, tmp_path):
    """The rest of the path on the user's word-level CSV: evaluate a separate file, verify, predict
    from the tokens column (the spans are offsets into the tokens joined by single spaces)."""
    rows = learnable_rows(20, seed=7)
    new = write_word_level(tmp_path / "new.csv", rows)
    cli("evaluate", str(trained["checkpoint"]), "--data", str(new), "--split", "all", "--out", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 20 and metrics["entity_f1"] > 0.9, metrics
    assert "pass" in cli("verify", str(trained["artifact"]), "--checkpoint", str(trained["checkpoint"]))
    cli("predict", str(trained["artifact"]), "--data", str(new), "--tokens-column", "words", "--out", str(tmp_path / "p.jsonl"))
    predicted = [json.loads(line)["entities"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold = [{(e["label"], e["start"], e["end"]) for e in r["entities"]} for r in rows]
    assert [{(e["entity_group"], e["start"], e["end"]) for e in p} for p in predicted] == gold
    assert all(e["word"] == r["text"][e["start"]:e["end"]] for r, p in zip(rows, predicted) for e in p)


# --- the real server -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner-server")
    proc, url = start_server(trained["artifact"], folder, argv=[sys.executable, "-m", "deploykit", "serve",
                                                                 str(trained["artifact"]), "--threads", "1",
                                                                 "--max-texts", "64"])
    yield url
    stop_server(proc)


TEXTS = ["we saw Ann Lee in Paris today", "quiet night", "Bob drove to New York " + "road " * 40 + "then Oslo"]


def test_ner_answers_what_the_runtime_does_with_the_pipelines_fields(server, runtime):
    for strategy in AGGREGATIONS:
        status, answer = post_json(server + "/ner", {"texts": TEXTS, "aggregation": strategy})
        assert status == 200 and answer["model"] == "ner" and answer["variant"] == "opt"
        assert answer["entities"] == json.loads(json.dumps(runtime.predict(TEXTS, strategy)))
    status, answer = post_json(server + "/ner", {"texts": TEXTS})  # the manifest's default: simple
    first = answer["entities"][0]
    assert [set(e) for e in first] == [{"entity_group", "score", "word", "start", "end"}] * 2
    assert [e["word"] for e in first] == ["Ann Lee", "Paris"]  # the text's own slice, not "ann lee"
    status, answer = post_json(server + "/ner", {"texts": TEXTS[:1], "aggregation": "none"})
    assert set(answer["entities"][0][0]) == {"entity", "score", "index", "word", "start", "end"}


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server):
    every_word = "Ann Lee Paris Oslo New York Bob"
    cases = [({"texts": [""]}, 400, "texts.0"), ({"texts": ["   \n\t"]}, 400, "texts.0"),
             ({"texts": ["x"], "aggregation": "bogus"}, 400, "aggregation"), ({"texts": ["x"] * 10_000}, 400, "64"),
             ({"texts": []}, 400, "texts"), ({"text": ["x"]}, 400, "texts"), (b"{not json", 400, "JSON"),
             ({"texts": ["word " * 220_000]}, 413, "tokens")]
    for body, status, word in cases:
        got, answer = post_json(server + "/ner", body)
        assert got == status and word in answer["error"], (body if isinstance(body, bytes) else str(body)[:80], answer)
    status, body, _ = http(server + "/ner", b'{"texts": ["x"]}', {"Content-Type": "multipart/form-data"})
    assert status == 415
    status, answer = post_json(server + "/ner", {"texts": ["Ann\x00 Lee\x1b[31m in\u202e Paris \x7f", every_word]})
    assert status == 200
    controls, every = answer["entities"]
    text = "Ann\x00 Lee\x1b[31m in\u202e Paris \x7f"
    assert all(e["word"] == text[e["start"]:e["end"]] and e["word"].strip() for e in controls)
    assert answer["entities"] == post_json(server + "/ner", {"texts": [text, every_word]})[1]["entities"]
    assert [(e["entity_group"], e["word"]) for e in every] == [
        ("PER", "Ann Lee"), ("LOC", "Paris"), ("LOC", "Oslo"), ("LOC", "New York"), ("PER", "Bob")]
    status, answer = post_json(server + "/ner", {"texts": TEXTS})
    assert status == 200 and len(answer["entities"]) == 3
    assert http(server + "/metrics")[0] == 200


def test_concurrent_requests_match_one_at_a_time(server):
    texts = [r["text"] for r in learnable_rows(32, seed=11)] + [TEXTS[2]]
    alone = [post_json(server + "/ner", {"texts": [t]})[1]["entities"][0] for t in texts]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: post_json(server + "/ner", {"texts": [t]})[1]["entities"][0], texts))
    assert together == alone


def test_tritonclient_works_unchanged_against_the_v2_route(server, runtime):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_model_ready("ner") and not client.is_model_ready("other")
    meta = client.get_model_metadata("ner")
    assert meta["inputs"][0]["name"] == "TEXT" and meta["outputs"] == [{"name": "ENTITIES", "datatype": "BYTES",
                                                                       "shape": [-1]}]
    for shape, binary in (([len(TEXTS)], True), ([len(TEXTS), 1], False)):
        text = httpclient.InferInput("TEXT", shape, "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object).reshape(shape), binary_data=binary)
        result = client.infer("ner", [text], outputs=[httpclient.InferRequestedOutput("ENTITIES", binary_data=binary)],
                              parameters={"aggregation": "first"}, request_id="7")
        documents = [json.loads(d) for d in result.as_numpy("ENTITIES").reshape(-1)]
        assert documents == json.loads(json.dumps(runtime.predict(TEXTS, "first")))
        assert result.get_response()["id"] == "7"
    with pytest.raises(Exception, match="unknown output"):
        client.infer("ner", [text], outputs=[httpclient.InferRequestedOutput("LABEL")])
    with pytest.raises(Exception, match="aggregation"):
        client.infer("ner", [text], parameters={"aggregation": "nope"})
    client.close()


def test_docs_list_the_ner_route(server):
    docs = json.loads(http(server + "/docs.json")[1])
    assert "/ner" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]


# --- around it ---------------------------------------------------------------------------------------

def test_triton_repository_holds_the_python_model(trained, tmp_path):
    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo

    repo = triton_repo.run(TritonConfig(artifact=str(trained["artifact"]), out=str(tmp_path / "repo")))
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "ner"]
    config = (repo / "ner" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and '"ENTITIES"' in config and "TYPE_STRING" in config
    copied = Manifest.verify(repo / "ner" / "1" / "artifact")
    assert list(copied.variants) == [Manifest.read(trained["artifact"]).default_variant]
    assert "--load-model=ner" in (repo / "README.md").read_text()


def test_kubernetes_overlay_renders_for_a_token_classifier(trained, tmp_path):
    from deploykit.config import KubeConfig
    from deploykit.deploy import k8s

    out = k8s.render(KubeConfig(image="registry.example.com/ner:1", artifact=str(trained["artifact"]),
                                out=str(tmp_path / "k8s"), validate=False))
    text = "\n".join(p.read_text() for p in out.rglob("*.yaml"))
    assert "DEPLOYKIT_VARIANT" in text and "deploykit.io/model: ner" in text


def test_bench_offline_runs_the_pipeline_optimum_and_the_runtime(trained, tmp_path):
    from deploykit.bench import offline
    from deploykit.config import BenchOfflineConfig

    out = offline.run(BenchOfflineConfig(artifact=str(trained["artifact"]), data=str(trained["test"]),
                                         checkpoint=str(trained["checkpoint"]), out=str(tmp_path / "bench"),
                                         engines="pytorch,optimum,runtime", batch_sizes="1,8", samples=16,
                                         warmup=1, min_iters=2, min_duration=0, threads=1))
    results = json.loads((out / "results.json").read_text())
    assert {c["engine"] for c in results["cells"]} == {"pytorch", "optimum:opt", "runtime:fp32", "runtime:opt"}
    assert results["aggregation"] == "simple" and all(c["texts_per_s"] > 0 for c in results["cells"])


def test_bench_online_drives_ner_and_its_v2_route(server, trained, tmp_path):
    from deploykit.bench import online
    from deploykit.config import BenchOnlineConfig

    for protocol in ("ner", "ner-v2"):
        out = online.run(BenchOnlineConfig(url=server, protocol=protocol, model="ner", data=str(trained["test"]),
                                           concurrency="2", duration=0.5, warmup=0.1, single_requests=2,
                                           out=str(tmp_path / protocol)))
        levels = json.loads((out / "results.json").read_text())["levels"]
        assert all(level["ok"] == level["requests"] > 0 for level in levels), levels


# --- a real tritonserver on the repository (PyTriton's CPU build, the Python backend) ----------------

@pytest.fixture(scope="module")
def triton_ner(trained, tmp_path_factory, pytriton_venv):
    """tritonserver on the repository ``deploykit triton`` writes, started with its README's command line."""
    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo

    repo = triton_repo.run(TritonConfig(artifact=str(trained["artifact"]), out=str(tmp_path_factory.mktemp("t") / "repo"),
                                        max_batch_size=16))
    with readme_server(pytriton_venv, repo, "ner") as client:
        yield client


def _infer(client, texts: list, **options):
    import tritonclient.http as httpclient

    text = httpclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
    result = client.infer("ner", [text], outputs=[httpclient.InferRequestedOutput("ENTITIES", binary_data=True)],
                          **options)
    return [json.loads(d) for d in result.as_numpy("ENTITIES").reshape(-1)]


@pytest.mark.slow
def test_real_tritonserver_answers_the_runtimes_entities(triton_ner, trained):
    runtime = Runtime(trained["artifact"])
    assert _infer(triton_ner, TEXTS) == json.loads(json.dumps(runtime.predict(TEXTS)))
    assert _infer(triton_ner, TEXTS, parameters={"aggregation": "none"}) == \
        json.loads(json.dumps(runtime.predict(TEXTS, "none")))


@pytest.mark.slow
def test_real_tritonserver_refuses_bad_bytes_and_keeps_serving(triton_ner):
    with pytest.raises(Exception, match="UTF-8|utf-8"):
        _infer(triton_ner, [b"\xff\xfe bad"])
    with pytest.raises(Exception, match="aggregation"):
        _infer(triton_ner, ["x"], parameters={"aggregation": "nope"})
    assert len(_infer(triton_ner, TEXTS[:2])) == 2

"""Text pairs (issue 26): a cross-encoder reranker (--problem-type relevance) trained on a new user's
query/document CSV, its manifest, parity with sentence-transformers' CrossEncoder, per-query NDCG and
MRR, and the real server's /classify (pairs), text-embeddings-inference's /rerank, the Cohere-style
/v1/rerank and v2 with two BYTES inputs, with every bad input a 4xx. One trained and exported tiny
model (``pair_run``) and one server serve them all."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fuzz_bodies import SEED, fuzz, has_traceback, pair_case
from test_serve import ROOT, http, post_json, start_server, stop_server

from deploykit import manifest as manifest_module
from deploykit.config import DataConfig, TrainConfig
from deploykit.errors import BadInputError, ConfigError
from deploykit.manifest import Manifest
from deploykit.tasks.classification import data
from deploykit.tasks.classification.head import Classification

QUERY = "we saw flight"
DOCS = ["the hotel road", "pizza on the road", "a goal today", "city layover it", "bread and dinner"]


# --- data ---------------------------------------------------------------------------------------

def test_a_pair_with_one_side_missing_and_a_bad_relevance_name_the_row(tmp_path):
    def write(rows):
        path = tmp_path / "p.csv"
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("q", "d", "y"), *rows])
        return str(path)

    dcfg = dict(text_column="q", text_pair_column="d", label_column="y", problem_type="relevance")
    with pytest.raises(BadInputError, match=r"row 2 of column 'd' is empty"):
        data.load_labelled(DataConfig(data=write([("a", "b", "1"), ("c", "", "0")]), **dcfg), ["score"])
    with pytest.raises(BadInputError, match=r"row 1 of column 'y' is 3.0; a relevance label is in \[0, 1\]"):
        data.load_labelled(DataConfig(data=write([("a", "b", "3")]), **dcfg), ["score"])
    rows = data.load_labelled(DataConfig(data=write([("a", "b", "1"), ("c", "d", "0.25")]), **dcfg), ["score"])
    assert rows.texts == [("a", "b"), ("c", "d")] and rows.labels == [1.0, 0.25]
    with pytest.raises(ConfigError, match="--problem-type: relevance scores a pair"):
        TrainConfig(data="x", model="y", problem_type="relevance")


# --- the checkpoint and the manifest ---------------------------------------------------------------

def test_manifest_records_the_pair_head_and_older_readers_refuse_it(pair_run, monkeypatch):
    _, checkpoint, artifact = pair_run
    doc = json.loads((artifact / "manifest.json").read_text())
    assert doc["schema_version"] == 2 and doc["problem_type"] == "relevance" and doc["labels"] == ["score"]
    assert doc["text_pair"] is True and doc["truncation"] == "only_second"
    head = Manifest.verify(artifact).head_as(Classification)
    assert head.text_pair and head.score_head and head.activation == "sigmoid"
    tokenizer = json.loads((artifact / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["strategy"] == "OnlySecond"
    monkeypatch.setattr(manifest_module, "READABLE_VERSIONS", (1,))
    with pytest.raises(BadInputError, match="schema_version 2; this deploykit reads 1"):
        Manifest.from_json(doc)
    monkeypatch.undo()
    with pytest.raises(BadInputError, match="'text_pair' must be true"):
        Manifest.from_json({k: v for k, v in doc.items() if k != "text_pair"})
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert {"spearman", "pearson", "ndcg_at_10", "mrr_at_10"} <= set(metrics) and metrics["metric"] == "spearman"


# --- parity -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(pair_run):
    from deploykit.runtime import Runtime

    return Runtime(pair_run[2], "fp32", threads=1)


def test_fp32_scores_and_rankings_match_crossencoder_predict(pair_run, runtime):
    import torch
    from sentence_transformers import CrossEncoder

    _, checkpoint, _ = pair_run
    queries = {QUERY: DOCS, "the goal": DOCS[::-1], "pizza city": DOCS[1:]}
    model = CrossEncoder(str(checkpoint), max_length=32, device="cpu")
    for query, docs in queries.items():
        pairs = [(query, d) for d in docs]
        want = model.predict(pairs, activation_fn=torch.nn.Sigmoid(), batch_size=32)
        got = np.array([r["score"] for r in runtime.predict(pairs)])
        np.testing.assert_allclose(got, want, atol=1e-4)
        for i in range(len(docs)):  # the same order, except between scores closer than the tolerance
            for j in range(len(docs)):
                if want[i] > want[j] + 1e-4:
                    assert got[i] > got[j]


def test_int8_is_gated_on_the_queries_ndcg_and_is_batch_independent(pair_run):
    manifest = Manifest.verify(pair_run[2])
    int8 = manifest.variants["int8"]
    assert int8.batch_independent
    ranked = {"spearman", "pearson", "ndcg_at_10", "mrr_at_10"}  # the test rows keep their query ids
    assert set(int8.metrics) == ranked and set(manifest.reference_metrics) == ranked
    assert -1 <= int8.parity["label_agreement"] <= 1  # Spearman of the INT8 scores against fp32's
    assert int8.parity["bounds"]["max_macro_f1_drop"] == 0.005  # --int8-max-ndcg-drop, not the F1 bound
    for name in ("fp32", "opt"):  # the float graphs keep every order further apart than the tolerance
        float_graph = manifest.variants[name]
        assert float_graph.parity["passed"] and float_graph.parity["label_agreement"] == 1.0, float_graph.parity
    drop = manifest.reference_metrics["ndcg_at_10"] - int8.metrics["ndcg_at_10"]
    assert any(f["check"] == "ndcg_at_10_drop" for f in int8.parity["failures"]) == (drop > 0.005)


def test_float_graphs_may_swap_near_ties_but_no_pair_further_apart():
    from deploykit.tasks.classification.decisions import Decisions, order_agreement

    reference = np.array([0.9, 0.5, 0.50001, 0.1])
    near_tie_swapped = np.array([0.9, 0.50001, 0.5, 0.1])
    rerank = Decisions(("score",), activation="identity")  # the logit [n, 1] is the score
    assert rerank.agreement(reference[:, None], near_tie_swapped[:, None]) < 1  # Spearman sees the swap
    assert rerank.agreement(reference[:, None], near_tie_swapped[:, None], tolerance=2e-4) == 1.0
    swapped = np.array([0.9, 0.1, 0.50001, 0.5])  # 0.5 and 0.1 change places: 4 of the 5 compared pairs kept
    assert order_agreement(reference, swapped, 2e-4) == pytest.approx(4 / 5)
    assert order_agreement(reference, reference, 2e-4, chunk=1) == 1.0 and order_agreement([1.0], [2.0], 1e-4) == 1.0


def test_the_int8_gate_ranks_per_query_and_a_reversed_ranking_misses_it():
    from deploykit.config import ParityConfig
    from deploykit.tasks.classification import parity
    from deploykit.tasks.classification.decisions import Decisions

    rerank = Decisions(("score",), activation="sigmoid")
    gold = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    groups = parity.ranking_groups(["a", "a", "a", "b", "b", "b"])
    good, reversed_ = np.array([[3.0], [0.0], [-1.0], [2.0], [1.0], [0.5]]), -np.array([[3.0], [0.0], [-1.0], [2.0], [1.0], [0.5]])
    best = parity.classification_metrics(good, gold, 1, rerank, groups)
    worst = parity.classification_metrics(reversed_, gold, 1, rerank, groups)
    assert best["ndcg_at_10"] == pytest.approx(1.0) and best["mrr_at_10"] == 1.0
    assert worst["ndcg_at_10"] < 0.6 and worst["mrr_at_10"] == pytest.approx(1 / 3)
    cfg = ParityConfig()
    assert parity.gated_f1(rerank, groups) == "ndcg_at_10" and parity.max_f1_drop(cfg, rerank, groups) == 0.005
    # One candidate per query ranks nothing: the gate falls back to the scores' Spearman correlation.
    assert parity.ranking_groups(["a", "b", "c"]) is None and parity.gated_f1(rerank, None) == "spearman"
    assert parity.max_f1_drop(cfg, rerank, None) == cfg.int8_max_f1_drop
    assert "ndcg_at_10" not in parity.classification_metrics(good, gold, 1, rerank, None)


def test_evaluate_reports_ndcg_and_mrr_and_predict_scores_pairs(pair_run, runtime, tmp_path):
    csv_file, checkpoint, artifact = pair_run
    commands = [["evaluate", str(checkpoint), "--out", str(tmp_path / "e")],
                # a separate test file, scored whole, ranked per query of its own query id column
                ["evaluate", str(checkpoint), "--data", str(csv_file), "--split", "all", "--group-column", "qid",
                 "--out", str(tmp_path / "all")],
                ["predict", str(artifact), "--data", str(csv_file), "--text-column", "query",
                 "--text-pair-column", "document", "--out", str(tmp_path / "p.jsonl")],
                # the Ray engine (a private one-node Ray): each row's two cells travel as one pair
                ["predict", str(artifact), "--data", str(csv_file), "--text-column", "query", "--text-pair-column",
                 "document", "--engine", "ray", "--workers", "1", "--object-store-memory", "100000000",
                 "--out", str(tmp_path / "ray")]]
    procs = [subprocess.Popen([sys.executable, "-m", "deploykit", *c], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for c in commands]
    errs = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errs
    from deploykit import predict
    from deploykit.config import PredictConfig

    with pytest.raises(BadInputError, match="pass --text-pair-column") as refused:  # a pair model needs both texts
        predict.run(PredictConfig(artifact=str(artifact), data=str(csv_file), text_column="query",
                                  out=str(tmp_path / "refused.jsonl")))
    assert refused.value.exit_code == 2 and not (tmp_path / "refused.jsonl").exists()
    with open(csv_file, newline="") as fh:
        rows = list(csv.DictReader(fh))
    scored = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    want = runtime.predict([(r["query"], r["document"]) for r in rows[:20]])
    assert [s["score"] for s in scored[:20]] == pytest.approx([w["score"] for w in want], abs=1e-5)
    from test_scale_ray import read_parts

    by_row = {r["row"]: r for r in read_parts(tmp_path / "ray")}
    assert sorted(by_row) == list(range(len(rows)))  # every row once
    assert [by_row[i]["score"] for i in range(len(rows))] == pytest.approx([s["score"] for s in scored], abs=1e-4)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert 0 <= metrics["ndcg_at_10"] <= 1 and 0 <= metrics["mrr_at_10"] <= 1 and metrics["queries"] > 0
    assert "NDCG@10" in (tmp_path / "e" / "report.md").read_text()
    whole = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert whole["queries"] == len({r["qid"] for r in rows}) > metrics["queries"]


# --- serving ------------------------------------------------------------------------------------------

MAX_TEXTS = 64


@pytest.fixture(scope="module")
def server(pair_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair-server")
    proc, url = start_server(pair_run[2], folder, "--variant", "fp32", "--max-texts", str(MAX_TEXTS))
    yield url, folder / "server.log"
    stop_server(proc)


def test_classify_takes_pairs(server, runtime):
    url, _ = server
    status, body = post_json(url + "/classify", {"pairs": [[QUERY, d] for d in DOCS]})
    assert status == 200
    want = runtime.predict([(QUERY, d) for d in DOCS])
    assert [b["score"] for b in body] == pytest.approx([w["score"] for w in want], abs=1e-6)
    status, body = post_json(url + "/classify", {"texts": DOCS})
    assert status == 400 and "pairs" in body["error"]


def test_tei_rerank_body_and_answer(server, runtime):
    url, _ = server
    want = [r["score"] for r in runtime.predict([(QUERY, d) for d in DOCS])]
    status, body = post_json(url + "/rerank", {"query": QUERY, "texts": DOCS, "return_text": True})
    assert status == 200 and isinstance(body, list)
    assert [b["index"] for b in body] == sorted(range(len(DOCS)), key=lambda i: -want[i])
    assert all(b["text"] == DOCS[b["index"]] and b["score"] == pytest.approx(want[b["index"]], abs=1e-6)
               for b in body)
    status, raw = post_json(url + "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True,
                                              "truncation_direction": "Left"})
    assert status == 200 and "text" not in raw[0]
    logits = {r["index"]: r["score"] for r in raw}
    assert all(abs(1 / (1 + np.exp(-logits[i])) - want[i]) < 1e-5 for i in range(len(DOCS)))
    long = "road " * 100
    status, body = post_json(url + "/rerank", {"query": QUERY, "texts": [long]})
    assert status == 413 and "truncate" in body["error"]  # TEI refuses what it must cut unless told to
    status, body = post_json(url + "/rerank", {"query": QUERY, "texts": [long], "truncate": True})
    assert status == 200


def test_cohere_rerank_body_and_answer(server, runtime):
    url, _ = server
    want = [r["score"] for r in runtime.predict([(QUERY, d) for d in DOCS])]
    documents = [d if i % 2 else {"text": d} for i, d in enumerate(DOCS)]
    status, body = post_json(url + "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": documents,
                                                  "top_n": 3})
    assert status == 200 and body["model"] == "reranker" and len(body["results"]) == 3
    best = sorted(range(len(DOCS)), key=lambda i: -want[i])[:3]
    assert [r["index"] for r in body["results"]] == best
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in body["results"])
    assert all(r["relevance_score"] == pytest.approx(want[r["index"]], abs=1e-6) for r in body["results"])


@pytest.mark.parametrize("route, payload, word", [
    ("/rerank", {"query": QUERY, "texts": []}, "texts"),
    ("/rerank", {"query": QUERY, "texts": ["x"] * 10_000}, "texts"),
    ("/rerank", {"query": QUERY, "texts": ["x", 3]}, "texts.1"),
    ("/rerank", {"texts": ["x"]}, "query"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": -2}, "top_n"),
    ("/v1/rerank", {"query": QUERY, "documents": [{"txt": "a"}]}, "documents"),
    ("/classify", {"pairs": [["a"]]}, "pairs.0"),
    ("/classify", {"pairs": [["a", ""]]}, "pairs.0.1"),
])
def test_bad_pair_inputs_are_400s_naming_the_field(server, route, payload, word):
    url, _ = server
    status, body = post_json(url + route, payload)
    assert status == 400 and word in body["error"], body


def test_v2_takes_two_bytes_inputs(server, runtime):
    import tritonclient.http as httpclient

    url, _ = server
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    meta = client.get_model_metadata("reranker")
    assert [i["name"] for i in meta["inputs"]] == ["TEXT", "TEXT_PAIR"]
    assert [o["name"] for o in meta["outputs"]] == ["SCORES"]
    inputs = []
    for name, values in (("TEXT", [QUERY] * len(DOCS)), ("TEXT_PAIR", DOCS)):
        tensor = httpclient.InferInput(name, [len(DOCS)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        inputs.append(tensor)
    result = client.infer("reranker", inputs)
    want = [r["score"] for r in runtime.predict([(QUERY, d) for d in DOCS])]
    np.testing.assert_allclose(result.as_numpy("SCORES")[:, 0], want, atol=1e-5)
    client.close()
    status, body, _ = http(url + "/v2/models/reranker/infer", json.dumps({"inputs": [
        {"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        {"name": "TEXT_PAIR", "datatype": "BYTES", "shape": [1], "data": ["c"]}]}).encode(),
        {"Content-Type": "application/json"})
    assert status == 400 and b"one side missing" in body


def test_fuzzed_pair_bodies_never_get_a_5xx(server, runtime):
    url, log = server
    statuses = fuzz(url, pair_case(), 60)
    print(f"pair fuzz, seed {SEED}: {sorted(statuses.items())}")
    assert statuses.get(400, 0) > 10, statuses
    status, body = post_json(url + "/rerank", {"query": QUERY, "texts": DOCS})  # still serving, still right
    assert status == 200 and len(body) == len(DOCS)
    text = log.read_text()
    assert not has_traceback(text) and "[ERROR]" not in text, text[-3000:]


def test_bench_online_rerank_workload(server, tmp_path):
    url, _ = server
    out = tmp_path / "rerank"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "bench", "online", "--url", url, "--protocol", "rerank",
                           "--texts-per-request", "33", "--concurrency", "2", "--duration", "1", "--warmup", "0",
                           "--single-requests", "0", "--samples", "40", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (level,) = json.loads((out / "results.json").read_text())["levels"]
    assert level["ok"] > 0 and level["errors"] == {}  # every answer held 32 ranked documents


@pytest.mark.slow
def test_real_tritonserver_serves_pairs_through_the_runtime_model(pair_run, runtime, tmp_path, pytriton_venv):
    """The repository's one model, NAME, on deploykit's runtime: TEXT and TEXT_PAIR in, SCORES out, from a
    real tritonserver started with the README's command line, through tritonclient; a pair with one
    side missing is refused and the server keeps serving."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo
    from test_triton import readme_server

    repo = triton_repo.run(TritonConfig(artifact=str(pair_run[2]), out=str(tmp_path / "repo"), variant="fp32",
                                        max_batch_size=8, threads=1))
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "reranker"]
    config = (repo / "reranker" / "config.pbtxt").read_text()
    assert '"TEXT_PAIR"' in config and '"SCORES"' in config and '"LABEL"' not in config

    def infer(queries: list[str], docs: list[str]):
        inputs = []
        for name, values in (("TEXT", queries), ("TEXT_PAIR", docs)):
            tensor = httpclient.InferInput(name, [len(values), 1], "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(-1, 1))
            inputs.append(tensor)
        return client.infer("reranker", inputs).as_numpy("SCORES")[:, 0]

    with readme_server(pytriton_venv, repo, "reranker") as client:
        scores = infer([QUERY] * len(DOCS), DOCS)
        with pytest.raises(InferenceServerException):
            infer([QUERY] * len(DOCS), DOCS[:2])
        again = infer([QUERY] * len(DOCS), DOCS)
    want = [r["score"] for r in runtime.predict([(QUERY, d) for d in DOCS])]
    np.testing.assert_allclose(scores, want, atol=1e-6)
    np.testing.assert_allclose(again, want, atol=1e-6)

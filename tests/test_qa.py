"""question-answering end to end on a tiny BERT that learns "who" in seconds, trained and exported through the
CLI on a new user's flat CSV (an answer and an answer-start column, unanswerable questions, --group-column);
its test file is SQuAD v2.0 JSON: the data shapes and their bad rows, the generated corpus, SQuAD's metrics,
windows (an answer across a window edge comes back whole, with its offsets), parity with
``transformers.pipeline("question-answering")`` answer for answer, the null threshold, evaluation, predict,
and the real server (/answer, the v2 route with tritonclient, bad input as 4xx, a bounded fuzz)."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.tasks.question_answering import corpus, squad
from deploykit.tasks.question_answering.runtime import Runtime
from fuzz_bodies import fuzz, json_case
from test_serve import http, post_json, start_server, stop_server

FILLER = ["road", "sun", "tree", "we", "saw", "it", "today", "car", "blue", "quiet", "night", "green", "house",
          "then", "drove", "to", "and", "a", "cat", "slept"]
NAMES = ["Ann Lee", "Bob Stone", "Mia Park", "Tom Reed"]
QUESTION = "who came?"
MAX_LENGTH, STRIDE = 24, 6  # [CLS] who came ? [SEP] ... [SEP]: 18 context tokens a window, 12 new each


def learnable_rows(n: int, seed: int = 0) -> list[dict]:
    """Filler words with one planted name (the answer to "who came?"), or none (no answer)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.randint(4, 30))
        if i % 5 == 4:
            rows.append({"question": QUESTION, "context": " ".join(words), "answer": "", "answer_start": "",
                         "doc": f"d{i // 4}"})
            continue
        where = rng.randint(0, len(words))
        before = " ".join(words[:where])
        name = rng.choice(NAMES)
        context = " ".join(filter(None, [before, name, " ".join(words[where:])]))
        rows.append({"question": QUESTION, "context": context, "answer": name,
                     "answer_start": len(before) + (1 if before else 0), "doc": f"d{i // 4}"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, ["question", "context", "answer", "answer_start", "doc"])
        out.writeheader()
        out.writerows(rows)
    return path


def as_squad(rows: list[dict]) -> list[dict]:
    """The CSV rows in the generated corpus's flat shape (what ``corpus.to_squad`` writes)."""
    return [{"id": f"q{i}", "title": r["doc"], "question": r["question"], "context": r["context"],
             "answers": {"text": [r["answer"]] if r["answer"] else [],
                         "answer_start": [r["answer_start"]] if r["answer"] else []}} for i, r in enumerate(rows)]


def cli(*args: str) -> None:
    """``deploykit ARGS`` as a user types it (the command's own parser and stages), in this process: the
    suite has torch loaded already, a subprocess would load it again."""
    from deploykit.cli import main

    assert main(list(args)) == 0, args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{root, data, test, checkpoint, artifact}: a tiny BERT trained through the command line on a flat CSV
    (answer and start columns, unanswerable questions, --group-column), exported (fp32, fused); ``test`` is
    SQuAD JSON."""
    from deploykit.tasks.question_answering import example

    root = tmp_path_factory.mktemp("qa")
    data = write_csv(root / "train.csv", learnable_rows(400))
    test = corpus.to_squad(as_squad(learnable_rows(40, seed=7)), root / "test.json")
    run, artifact = root / "run", root / "artifact"
    cli("train", "--task", "question-answering", "--data", str(data), "--answer-column", "answer",
        "--answer-start-column", "answer_start", "--allow-no-answer", "--group-column", "doc",
        "--model", str(example.pretrained(root / "pretrained")), "--out", str(run), "--max-length", str(MAX_LENGTH),
        "--doc-stride", str(STRIDE), "--max-steps", "100", "--batch-size", "16", "--lr", "5e-3", "--eval-every", "60",
        "--warmup-ratio", "0")
    cli("export", str(run / "checkpoint"), "--out", str(artifact), "--name", "qa", "--quantize", "none")
    return {"root": root, "data": data, "test": test, "checkpoint": run / "checkpoint", "artifact": artifact}


@pytest.fixture(scope="module")
def runtime(trained):
    return Runtime(trained["artifact"], "opt")


# --- data, corpus and metrics (no model) -------------------------------------------------------------

def _dcfg(data: Path, **options):
    from deploykit.config import DataConfig

    return DataConfig(task="question-answering", data=str(data), **options)


def test_squad_json_and_flat_files_read_the_same_questions(tmp_path):
    from deploykit.tasks.question_answering import data

    rows = as_squad(learnable_rows(30))
    squad_file = corpus.to_squad(rows, tmp_path / "squad.json")
    flat = corpus.write_jsonl(rows, tmp_path / "flat.jsonl")
    a, _ = data.held_out(_dcfg(squad_file, allow_no_answer=True), "all")
    b, _ = data.held_out(_dcfg(flat, allow_no_answer=True), "all")
    assert sorted(zip(a.questions, a.contexts, map(tuple, a.answers))) == \
        sorted(zip(b.questions, b.contexts, map(tuple, b.answers)))
    assert sum(1 for x in a.answers if not x) == 6
    # SQuAD v2.0's unanswerable questions need --allow-no-answer; the message names the row.
    with pytest.raises(BadInputError, match=r"row 5 of column 'answers' has no answer; pass --allow-no-answer"):
        data.held_out(_dcfg(squad_file), "all")
    # Training splits of the SQuAD file: --group-column title keeps an article's questions in one split.
    splits = data.load_splits(_dcfg(squad_file, allow_no_answer=True, group_column="title"))
    titles = {name: {r["title"] for r in rows if r["id"] in set(splits.get(name).ids)}
              for name in ("train", "validation", "test")}
    assert all(titles.values()) and not (titles["train"] & titles["test"]) and not (titles["train"] & titles["validation"])
    assert splits.shape == "SQuAD JSON" and splits.no_answer > 0
    # Both answer shapes: SQuAD's dict and a list of {text, answer_start}.
    assert data.answers_cell({"text": ["x"], "answer_start": [3]}) == [("x", 3)]
    assert data.answers_cell('[{"text": "x", "answer_start": 3}]') == [("x", 3)]
    assert data.answers_cell({"text": np.array([]), "answer_start": np.array([])}) == []


def test_parquet_answers_structs_and_numeric_answer_columns_read_as_jsonl(tmp_path):
    """pyarrow gives a SQuAD ``answers`` struct's starts as numpy integers, and pandas reads an answer column
    of numbers ("how many") as int or float: both read as the same questions as JSONL."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deploykit.tasks.question_answering import data

    rows = as_squad(learnable_rows(20))
    rows[0]["context"], rows[0]["answers"] = "we saw 12 cats", {"text": ["12"], "answer_start": [7]}
    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("question", pa.string()),
                        ("context", pa.string()), ("answers", pa.struct([("text", pa.list_(pa.string())),
                                                                          ("answer_start", pa.list_(pa.int32()))]))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "flat.parquet")
    a, _ = data.held_out(_dcfg(tmp_path / "flat.parquet", allow_no_answer=True), "all")
    b, _ = data.held_out(_dcfg(corpus.write_jsonl(rows, tmp_path / "flat.jsonl"), allow_no_answer=True), "all")
    assert (a.questions, a.contexts, a.answers) == (b.questions, b.contexts, b.answers) and a.answers[0] == [("12", 7)]
    assert data.answers_cell({"text": "x", "answer_start": np.int64(3)}) == [("x", 3)]
    # "how many" answers only: an int column, and a float one beside an unanswerable (empty) row.
    counts = [{"question": "how many?", "context": f"we saw {n} cats", "answer": n, "answer_start": 7} for n in (3, 12)]
    pd.DataFrame(counts).to_csv(tmp_path / "ints.csv", index=False)
    pd.DataFrame(counts + [{"question": "how many?", "context": "no cats", "answer": None, "answer_start": None}]
                 ).to_csv(tmp_path / "floats.csv", index=False)
    for name in ("ints.csv", "floats.csv"):
        got, _ = data.held_out(_dcfg(tmp_path / name, answer_column="answer", answer_start_column="answer_start",
                                     allow_no_answer=True), "all")
        assert got.answers[:2] == [[("3", 7)], [("12", 7)]], name


def test_bad_rows_are_named_with_their_row_or_skipped_and_counted(tmp_path):
    from deploykit.tasks.question_answering import data

    rows = learnable_rows(40)
    rows[3]["answer_start"] = int(rows[3]["answer_start"] or 0) + 2  # the text is not at its start
    rows[7]["question"] = " "
    path = write_csv(tmp_path / "bad.csv", rows)
    options = {"answer_column": "answer", "answer_start_column": "answer_start", "allow_no_answer": True}
    with pytest.raises(BadInputError, match=r"row 4 of column 'answer_start' has the answer .* fix answer_start"
                                            r".*\(and 1 more bad rows\).*--skip-bad-rows"):
        data.load_splits(_dcfg(path, **options))
    splits = data.load_splits(_dcfg(path, skip_bad_rows=True, **options))
    assert splits.skipped == 2 and len(splits.train) + len(splits.validation) + len(splits.test) == 38
    with pytest.raises(BadInputError, match="--answer-start-column"):  # exit 2
        data.load_splits(_dcfg(path, answer_column="answer"))


def test_generated_corpus_plants_answers_and_keeps_test_names_unseen():
    train = corpus.generate(300, seed=0, sentences=list(corpus.FALLBACK_SENTENCES))
    test = corpus.generate(100, seed=1, pools="test", sentences=list(corpus.FALLBACK_SENTENCES))
    for row in train + test:
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start:start + len(text)] == text
    names = {row["answers"]["text"][0] for row in train if row["kind"] in ("who", "where")}
    unseen = {row["answers"]["text"][0] for row in test if row["kind"] in ("who", "where")}
    assert names and unseen and not names & unseen
    assert 0.05 < sum(row["kind"] == "none" for row in train) / len(train) < 0.3
    assert max(row["sentences"] for row in train) >= 12 and min(row["sentences"] for row in train) <= 4
    assert corpus.generate(50, seed=3) == corpus.generate(50, seed=3)


def test_squad_metrics_use_the_official_normalisation_and_find_the_best_threshold():
    assert squad.normalize("The  Eiffel, tower!") == "eiffel tower"
    assert squad.f1("the cat sat", "a cat") == pytest.approx(2 * (1 / 1) * (1 / 2) / (1 + 1 / 2))
    m = squad.metrics([["Paris"], [], ["Ann Lee"]], ["paris.", "", "Lee"], [-0.5, 0.4, 0.1])
    assert m["exact_match"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert (m["has_ans_n"], m["no_ans_n"], m["no_ans_f1"]) == (2, 1, 1.0)
    # Answering only the question with the lowest no-answer score (threshold -0.5) is the best rule.
    best = squad.metrics([["Paris"], [], ["Ann Lee"]], ["Paris", "Oslo", "Bob"], [-0.5, 0.4, 0.1])
    assert best["best_f1"] == pytest.approx(2 / 3) and best["best_f1_threshold"] == -0.5
    # HasAns comes from the raw gold list (the official script): "." normalises to nothing yet is an answer.
    raw = squad.metrics([["."], [], ["Paris"]], ["", "", "Paris"])
    assert (raw["has_ans_n"], raw["no_ans_n"], raw["has_ans_f1"]) == (2, 1, 1.0)


def test_every_strategy_trains_the_span_head():
    """full, ffn, layerwise, head and lora on a question-answering model: the new span head trains in each
    (what the one loop's _apply_strategy sets up), and a step's loss has a gradient."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from deploykit import strategies
    from factories import tiny_config

    config = tiny_config(labels=["start", "end"])
    for strategy in ("full", "ffn", "layerwise", "head", "lora"):
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(config)
        if strategy == "lora":
            model = strategies.add_lora(model, r=4, alpha=8, dropout=0.0, train_head=True)
        else:
            strategies.apply(model, strategies.trainable_names(model, strategy))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert any("qa_outputs" in n for n in trainable), strategy
        batch = {"input_ids": torch.tensor([[101, 2040, 102, 3103, 102]]), "start_positions": torch.tensor([3]),
                 "end_positions": torch.tensor([3])}
        model(**batch).loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "qa_outputs" in n)


# --- the trained model ---------------------------------------------------------------------------------

def test_training_learned_who_and_the_checkpoint_is_a_reader(trained):
    metrics = json.loads((trained["checkpoint"] / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and metrics["f1"] > 0.9 and "best_f1_threshold" in metrics, metrics
    config = json.loads((trained["checkpoint"] / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]


def test_an_answer_across_a_window_edge_comes_back_whole_with_its_offsets(runtime):
    # 17 filler words, then "Ann" as the 18th and last context token of window 0; window 1 (12 tokens
    # later, the last window) holds "Ann Lee" whole.
    context = " ".join(FILLER[:17]) + " Ann Lee " + " ".join(FILLER[:10])
    rows = runtime.tokenize([QUESTION], [context])
    assert len(rows) == 2 and rows[0].tokens[-2] == "ann" and "lee" not in rows[0].tokens
    assert rows[1].tokens[10:12] == ["ann", "lee"]
    start = context.index("Ann Lee")
    (best,) = runtime.predict([QUESTION], [context])[0]
    assert (best["answer"], best["start"], best["end"]) == ("Ann Lee", start, start + 7)
    far = " ".join(random.Random(3).choices(FILLER, k=150)) + " then Mia Park came"
    assert len(runtime.tokenize([QUESTION], [far])) > 10
    assert runtime.predict([QUESTION], [far])[0][0]["answer"] == "Mia Park"


def test_runtime_matches_the_transformers_pipeline_answer_for_answer(trained, runtime):
    """top_k 1 and 5, with and without the empty answer and word alignment, contexts of many windows."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    from deploykit.tasks.question_answering import answers, parity

    rng = random.Random(5)
    contexts = [r["context"] for r in learnable_rows(8, seed=9)]
    contexts += [" ".join(rng.choices(FILLER + ["Ann Lee", "Tom"], k=rng.randint(20, 70))) for _ in range(4)]
    contexts += ["Unicode café — Ünïcode Ann Lee ☃ 東京", " ".join(FILLER[:17]) + " Ann Lee " + " ".join(FILLER[:10])]
    questions = [QUESTION] * len(contexts)
    model = AutoModelForQuestionAnswering.from_pretrained(trained["checkpoint"]).eval()
    pipe = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(trained["checkpoint"]))
    rows = runtime.tokenize(questions, contexts)
    logits = runtime.logits_of(rows)
    for top_k, impossible, align in ((1, True, True), (5, False, True), (5, True, False)):
        kwargs = {**parity.pipeline_kwargs(runtime.head, MAX_LENGTH, top_k), "handle_impossible_answer": impossible,
                  "align_to_words": align}
        want = parity.pipeline_answers(pipe, questions, contexts, kwargs)
        rules = answers.Rules(top_k, runtime.head.max_answer_len, align, impossible)
        got = [d.answers for d in runtime.decoded(contexts, rows, logits, rules)]
        assert [parity.spans(g) for g in got] == [parity.spans(w) for w in want], (top_k, impossible, align)
        assert np.allclose([a["score"] for g in got for a in g], [a["score"] for w in want for a in w], atol=1e-4)


def test_export_records_the_head_and_parity_with_the_pipeline(trained):
    manifest = Manifest.verify(trained["artifact"])
    head = manifest.head
    assert (head.doc_stride, head.max_answer_len, head.handle_impossible_answer) == (STRIDE, 15, True)
    assert head.null_score_space == "null_minus_best_probability" and isinstance(head.null_threshold, float)
    assert manifest.max_length == MAX_LENGTH and manifest.reference_metrics["f1"] > 0.9
    for name in ("fp32", "opt"):
        parity = manifest.variants[name].parity
        assert parity["passed"] and parity["list_agreement"] == 1.0 and parity["max_score_diff"] <= 1e-4
        assert manifest.variants[name].batch_dependence <= 1e-4
    assert manifest.evaluation.columns["context_column"] == "context"
    # A head written by a newer deploykit (rules this one does not know) is refused.
    doc = json.loads((trained["artifact"] / "manifest.json").read_text())
    with pytest.raises(BadInputError, match="qa_head_version"):
        Manifest.from_json({**doc, "qa_head_version": 2})


def test_unanswerable_questions_get_the_empty_answer_by_the_null_threshold(runtime):
    found = runtime.predict([QUESTION, QUESTION], ["the quiet road and a cat slept today", "we saw Tom Reed today"])
    assert found[0][0] == {"answer": "", "start": 0, "end": 0, "score": found[0][0]["score"]}
    assert found[1][0]["answer"] == "Tom Reed"
    # The threshold decides: the same logits with the pipeline's own ranking (top 3 includes the empty one).
    rows = runtime.tokenize([QUESTION], ["the quiet road and a cat slept today"])
    ranked = runtime.answers(["the quiet road and a cat slept today"], rows, runtime.logits_of(rows), 3, threshold=False)
    assert "" in [a["answer"] for a in ranked[0]]


def test_evaluate_verify_and_predict_on_a_squad_file(trained, tmp_path):
    from deploykit import evaluation, export, predict
    from deploykit.config import EvalConfig, PredictConfig, VerifyConfig

    out = evaluation.run(EvalConfig(checkpoint=str(trained["checkpoint"]), data=str(trained["test"]), split="all",
                                    slice_column="title", out=str(tmp_path / "eval"), max_errors=3))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["f1"] > 0.85 and metrics["no_ans_n"] == 8, metrics
    assert {"best_f1_threshold", "tuned_f1", "by_length", "by_slice"} <= set(metrics)
    report = (out / "report.md").read_text()
    assert "## Answerable and unanswerable questions" in report and "## By context length" in report
    assert len((out / "errors.jsonl").read_text().splitlines()) <= 3
    report = export.verify(VerifyConfig(artifact=str(trained["artifact"]), checkpoint=str(trained["checkpoint"])))
    assert report["rows"]["same_as_export"] is True and all(v["parity"]["passed"] for v in report["variants"].values())
    data = write_csv(tmp_path / "in.csv", learnable_rows(6, seed=4))
    written = predict.run(PredictConfig(artifact=str(trained["artifact"]), data=str(data), out=str(tmp_path / "p.jsonl")))
    predicted = [json.loads(line) for line in written.read_text().splitlines()]
    assert [p["answer"] for p in predicted] == [r["answer"] for r in learnable_rows(6, seed=4)]
    # A question the model cannot take is named by its row in the file, not its place in a chunk.
    rows = learnable_rows(6, seed=4)
    rows[4]["question"] = "who " * 30
    data = write_csv(tmp_path / "long.csv", rows)
    with pytest.raises(BadInputError, match=r"^row 5: the question has \d+ tokens"):
        predict.run(PredictConfig(artifact=str(trained["artifact"]), data=str(data), out=str(tmp_path / "q.jsonl"),
                                  chunk_size=3))


def test_one_question_length_limit_in_training_export_and_the_int8_runtime(trained, tmp_path):
    """The head's max_question_len (shorter here than what a window leaves) is the limit of training,
    evaluation and export as of serving: a longer question is named (exit 2) or skipped and counted; the
    INT8 calibration and search runtime answers by the export's head, not a default one."""
    from transformers import AutoTokenizer

    from deploykit import evaluation
    from deploykit.config import EvalConfig, ExportConfig, TrainConfig
    from deploykit.tasks.question_answering import export, train
    from deploykit.tasks.question_answering.head import QuestionAnswering

    rows = learnable_rows(30)
    rows[2]["question"] = "who came to the quiet house today?"  # 8 tokens: within a window, over 4
    path = write_csv(tmp_path / "long.csv", rows)
    options = {"task": "question-answering", "data": str(path), "answer_column": "answer",
               "answer_start_column": "answer_start", "allow_no_answer": True, "max_length": MAX_LENGTH,
               "doc_stride": STRIDE, "max_question_len": 4, "seed": 1}
    tokenizer = AutoTokenizer.from_pretrained(trained["checkpoint"])
    training = train.Training(TrainConfig(**options))
    with pytest.raises(BadInputError, match=r"id 'all-2'.* has 8 tokens.*at most 4 tokens.*--skip-bad-rows"):
        training.prepare(tokenizer, None, None)
    training = train.Training(TrainConfig(**options, skip_bad_rows=True))
    training.prepare(tokenizer, None, None)
    assert training.splits.skipped == 1 and "all-2" not in training.splits.train.ids + training.splits.validation.ids
    exporter = export.Export(ExportConfig(checkpoint=str(trained["checkpoint"]), out=str(tmp_path / "a"), data=str(path),
                                          split="all", max_question_len=4), trained["checkpoint"])
    with pytest.raises(BadInputError, match=r"id 'all-2'.*--max-question-len 4"):
        exporter.load()
    with pytest.raises(BadInputError, match=r"id 'all-2'.*--max-question-len 4"):
        evaluation.run(EvalConfig(checkpoint=str(trained["checkpoint"]), data=str(path), split="all",
                                  out=str(tmp_path / "eval"), max_question_len=4))
    head = QuestionAnswering(doc_stride=STRIDE, max_answer_len=3, max_question_len=4, handle_impossible_answer=True)
    graph = Runtime.of_graph(trained["artifact"] / "model.onnx", trained["artifact"] / "tokenizer.json", MAX_LENGTH,
                             head=head)
    assert graph.head == head and graph.question_limit == 4 and graph.rules().max_answer_len == 3


def test_export_tunes_the_null_threshold_with_the_rules_it_writes(trained, tmp_path):
    """The threshold lives in the score space of the head's rules: with training's (default) rules export
    finds training's threshold again; with --max-answer-len 1 (the best answers' probabilities move) another."""
    from deploykit.config import ExportConfig
    from deploykit.tasks.question_answering import export
    from deploykit.tasks.question_answering.evaluate import validation_threshold

    def head(**options):
        exporter = export.Export(ExportConfig(checkpoint=str(trained["checkpoint"]), out=str(tmp_path / "a"),
                                              **options), trained["checkpoint"])
        exporter.load()
        return exporter.head()

    trained_threshold = validation_threshold(trained["checkpoint"])
    assert head().null_threshold == pytest.approx(trained_threshold, abs=1e-6)
    short = head(max_answer_len=1)
    assert short.max_answer_len == 1 and short.null_threshold != pytest.approx(trained_threshold, abs=1e-6)


# --- the real server -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa-server")
    proc, url = start_server(trained["artifact"], folder, argv=[sys.executable, "-m", "deploykit", "serve",
                                                                 str(trained["artifact"]), "--threads", "1",
                                                                 "--max-texts", "64"])
    yield url
    stop_server(proc)


LONG = " ".join(FILLER * 4) + " Bob Stone came " + " ".join(FILLER)


def test_answer_route_answers_what_the_runtime_does_with_the_pipelines_fields(server, runtime):
    status, one = post_json(server + "/answer", {"question": QUESTION, "context": LONG})
    start = LONG.index("Bob Stone")
    assert status == 200 and (one["answer"], one["start"], one["end"]) == ("Bob Stone", start, start + 9)
    assert set(one) == {"answer", "score", "start", "end", "model", "variant"} and one["variant"] == "opt"
    status, ranked = post_json(server + "/answer", {"question": QUESTION, "context": LONG, "top_k": 3})
    assert status == 200 and len(ranked["answers"]) == 3 and ranked["answers"][0]["answer"] == "Bob Stone"
    items = [{"question": QUESTION, "context": c} for c in (LONG, "we saw Mia Park", "a cat slept")]
    status, many = post_json(server + "/answer", items)
    assert status == 200 and [a["answer"] for a in many["answers"]] == ["Bob Stone", "Mia Park", ""]
    assert many["answers"] == json.loads(json.dumps([f[0] for f in runtime.predict([QUESTION] * 3,
                                                                                 [i["context"] for i in items])]))


def test_a_list_request_decodes_each_question_with_its_own_top_k(server):
    """The pipeline's n-best (and so a merged answer's score, and the null decision) depends on top_k: a
    top_k=1 question beside a top_k=20 one answers exactly as it does alone."""
    # Word-aligned sub-token spans of "Annleebob" merge into one answer: more candidates, a higher score.
    item = {"question": QUESTION, "context": "then we then quiet sun drove night tree Bnmrlqx Annleebob it car cat house"}
    status, alone = post_json(server + "/answer", item)
    status_many, many = post_json(server + "/answer", [item, {**item, "top_k": 20}])
    assert status == status_many == 200 and alone["answer"] == "Annleebob"
    assert many["answers"][0] == {k: alone[k] for k in ("answer", "score", "start", "end")}
    assert many["answers"][1][0]["score"] > alone["score"]  # the same answer, more merged candidates


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server):
    ok = {"question": QUESTION, "context": "we saw Ann Lee"}
    cases = [({**ok, "question": ""}, 400, "question"), ({**ok, "context": "  "}, 400, "context"),
             ({**ok, "question": "who " * 30}, 400, "tokens"), ({**ok, "top_k": 0}, 400, "top_k"),
             ({**ok, "top_k": 21}, 400, "top_k"), ({**ok, "top_k": "2"}, 400, "top_k"),
             ({**ok, "question": 7}, 400, "question"), ({**ok, "context": ["x"]}, 400, "context"),
             ([ok] * 10_000, 400, "64"), ([], 400, "body"), ({"question": QUESTION}, 400, "context"),
             (b"{not json", 400, "JSON"), ({**ok, "context": "word " * 220_000}, 413, "tokens")]
    for body, status, word in cases:
        got, answer = post_json(server + "/answer", body)
        assert got == status and word in answer["error"], (str(body)[:80], answer)
    assert http(server + "/answer", json.dumps(ok).encode(), {"Content-Type": "multipart/form-data"})[0] == 415
    status, answer = post_json(server + "/answer", ok)
    assert status == 200 and answer["answer"] == "Ann Lee"
    # A context the tokenizer reads as no token at all answers nothing (not an error).
    status, answer = post_json(server + "/answer", {"question": QUESTION, "context": "\u200b", "top_k": 2})
    assert status == 200 and answer["answers"][0]["answer"] == ""
    docs = json.loads(http(server + "/docs.json")[1])
    assert "/answer" in docs["paths"] and "/v2/models/{name}/infer" in docs["paths"]


def test_tritonclient_works_unchanged_against_the_v2_route(server, runtime):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_model_ready("qa")
    meta = client.get_model_metadata("qa")
    assert [i["name"] for i in meta["inputs"]] == ["QUESTION", "CONTEXT"]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("ANSWER", "BYTES"), ("SCORE", "FP32"),
                                                                    ("START", "INT64"), ("END", "INT64")]
    contexts = [LONG, "we saw Mia Park", "a cat slept"]
    want = [f[0] for f in runtime.predict([QUESTION] * 3, contexts)]
    for shape, binary in (([3], True), ([3, 1], False)):
        inputs = []
        for name, values in (("QUESTION", [QUESTION] * 3), ("CONTEXT", contexts)):
            tensor = httpclient.InferInput(name, shape, "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(shape), binary_data=binary)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("ANSWER", "SCORE", "START", "END")]
        result = client.infer("qa", inputs, outputs=outputs, request_id="7")
        got = [a.decode() if isinstance(a, bytes) else a for a in result.as_numpy("ANSWER").reshape(-1)]
        assert got == [w["answer"] for w in want]
        assert result.as_numpy("START").tolist() == [w["start"] for w in want]
        assert result.as_numpy("END").tolist() == [w["end"] for w in want]
        assert np.allclose(result.as_numpy("SCORE"), [w["score"] for w in want], atol=1e-6)
        assert result.as_numpy("SCORE").dtype == np.float32 and result.get_response()["id"] == "7"
    with pytest.raises(Exception, match="QUESTION and CONTEXT"):
        client.infer("qa", inputs[:1])
    client.close()


def test_fuzzed_answer_and_v2_bodies_get_4xx_never_5xx(server):
    """The route's bodies mutated at 1-3 places (the contract test fuzzes /answer's list shape too)."""
    v2_body = {"inputs": [{"name": "QUESTION", "datatype": "BYTES", "shape": [1], "data": [QUESTION]},
                          {"name": "CONTEXT", "datatype": "BYTES", "shape": [1], "data": ["we saw Ann Lee"]}]}
    for route, body in (("/answer", {"question": QUESTION, "context": LONG, "top_k": 2}),
                        ("/v2/models/qa/infer", v2_body)):
        statuses = fuzz(server, json_case(route, body), 60)
        assert statuses.get(400, 0) and not any(s >= 500 for s in statuses), statuses
    assert post_json(server + "/answer", {"question": QUESTION, "context": "we saw Ann Lee"})[0] == 200


# --- around it ---------------------------------------------------------------------------------------

def test_triton_repository_and_kubernetes_overlay(trained, tmp_path):
    from deploykit.config import KubeConfig, TritonConfig
    from deploykit.deploy import k8s
    from deploykit.serve import triton_repo

    repo = triton_repo.run(TritonConfig(artifact=str(trained["artifact"]), out=str(tmp_path / "repo")))
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "qa"]
    config = (repo / "qa" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and all(f'"{n}"' in config for n in ("QUESTION", "CONTEXT", "ANSWER", "END"))
    assert "TYPE_FP32" in config and "TYPE_INT64" in config
    assert list(Manifest.verify(repo / "qa" / "1" / "artifact").variants) == [Manifest.read(trained["artifact"]).default_variant]
    out = k8s.render(KubeConfig(image="registry.example.com/qa:1", artifact=str(trained["artifact"]),
                                out=str(tmp_path / "k8s"), validate=False))
    text = "\n".join(p.read_text() for p in out.rglob("*.yaml"))
    assert "DEPLOYKIT_VARIANT" in text and "deploykit.io/model: qa" in text


@pytest.mark.slow
def test_build_packs_the_reader_and_the_bento_answers_as_the_runtime(trained, tmp_path):
    """``deploykit build`` of a QA artifact: a bento without the training stack that BentoML's own
    ``bentoml serve`` runs, answering /answer as the runtime does (the container is this bento)."""
    import os
    import subprocess

    home = tmp_path / "bentoml"
    done = subprocess.run([sys.executable, "-m", "deploykit", "build", str(trained["artifact"]), "--bentoml-home",
                           str(home), "--tag", "deploykit-qa:v1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    assert done.returncode == 0, done.stderr[-3000:]
    bento = home / "bentos" / "deploykit-qa" / "v1"
    requirements = (bento / "env/python/requirements.txt").read_text().lower()
    assert "torch" not in requirements and "transformers" not in requirements
    packed = Manifest.verify(bento / "src/artifact")
    assert packed.task == "question-answering" and list(packed.variants) == [packed.default_variant]
    proc, url = start_server(None, tmp_path, argv=[sys.executable, "-m", "bentoml", "serve", "deploykit-qa:v1",
                                                   "--host", "127.0.0.1"],
                             env={"BENTOML_HOME": str(home), "DEPLOYKIT_ARTIFACT": ""})
    question, context = "who won the chess tournament?", "The chess tournament was won by Ann Lee in May."
    try:
        status, body = post_json(url + "/answer", {"question": question, "context": context})
    finally:
        stop_server(proc)
    assert status == 200, body
    want = Runtime(bento / "src/artifact").predict([question], [context])[0][0]
    assert (body["answer"], body["start"], body["end"]) == (want["answer"], want["start"], want["end"])
    assert body["score"] == pytest.approx(want["score"], abs=1e-4) and body["model"] == packed.name


def test_bench_offline_and_online_drive_the_reader(trained, server, tmp_path):
    from deploykit.bench import offline, online
    from deploykit.config import BenchOfflineConfig, BenchOnlineConfig

    out = offline.run(BenchOfflineConfig(artifact=str(trained["artifact"]), data=str(trained["test"]),
                                         checkpoint=str(trained["checkpoint"]), out=str(tmp_path / "bench"),
                                         engines="runtime", batch_sizes="1,8", samples=16, warmup=1, min_iters=2,
                                         min_duration=0, threads=1))
    results = json.loads((out / "results.json").read_text())
    assert {c["engine"] for c in results["cells"]} == {"runtime:fp32", "runtime:opt"}
    assert results["rules"]["doc_stride"] == STRIDE and all(c["texts_per_s"] > 0 for c in results["cells"])
    for protocol in ("answer", "answer-v2"):
        out = online.run(BenchOnlineConfig(url=server, protocol=protocol, model="qa", data=str(trained["test"]),
                                           concurrency="2", duration=0.5, warmup=0.1, single_requests=2,
                                           out=str(tmp_path / protocol)))
        levels = json.loads((out / "results.json").read_text())["levels"]
        assert all(level["ok"] == level["requests"] > 0 for level in levels), levels


# --- a real tritonserver on the repository (PyTriton's CPU build, the Python backend) ----------------

@pytest.fixture(scope="module")
def triton_qa(trained, tmp_path_factory, pytriton_venv):
    """tritonserver on the repository ``deploykit triton`` writes, started with its README's command line."""
    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo
    from test_triton import readme_server

    repo = triton_repo.run(TritonConfig(artifact=str(trained["artifact"]), out=str(tmp_path_factory.mktemp("t") / "repo"),
                                        max_batch_size=16))
    with readme_server(pytriton_venv, repo, "qa") as client:
        yield client


@pytest.mark.slow
def test_real_tritonserver_answers_as_the_runtime_and_refuses_bad_bytes(triton_qa, runtime):
    import tritonclient.http as httpclient

    def infer(questions: list, contexts: list):
        inputs = []
        for name, values in (("QUESTION", questions), ("CONTEXT", contexts)):
            tensor = httpclient.InferInput(name, [len(values), 1], "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(-1, 1))
            inputs.append(tensor)
        result = triton_qa.infer("qa", inputs)
        return [(a.decode(), int(s), int(e)) for a, s, e in zip(result.as_numpy("ANSWER").reshape(-1),
                                                                  result.as_numpy("START").reshape(-1),
                                                                  result.as_numpy("END").reshape(-1))]

    contexts = [LONG, "we saw Mia Park", "a cat slept"]
    want = [(a["answer"], a["start"], a["end"]) for a in (f[0] for f in runtime.predict([QUESTION] * 3, contexts))]
    assert infer([QUESTION] * 3, contexts) == want
    with pytest.raises(Exception, match="UTF-8|utf-8|bad request"):
        infer([b"\xff\xfe bad"], ["x"])
    assert infer([QUESTION], ["we saw Ann Lee"]) == [("Ann Lee", 7, 14)]

"""token-classification data: both shapes (word-level tokens/tags, span-level entities in the formats
annotation tools export), the tag schemes, the bad rows named by row and column (or skipped and
counted), and --group-column keeping a group in one split (for every task)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.config import DataConfig
from deploykit.errors import BadInputError
from deploykit.tasks.token_classification import data, formats, tags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def words_of(tokenizer):
    return data.backend(tokenizer)


def config(path: Path, **options) -> DataConfig:
    return DataConfig(task="token-classification", data=str(path), **options)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sentence(i: int) -> dict:
    """Span-level rows: 'met NAME in CITY' with the spans of both."""
    name, city = ["Ann Lee", "Bob Ray", "Cy Day"][i % 3], ["Paris", "Oslo", "New York"][i % 3]
    text = f"row {i} met {name} in {city}"
    start = text.index(name)
    return {"text": text, "entities": [{"start": start, "end": start + len(name), "label": "PER"},
                                       {"start": text.index(city), "end": len(text), "label": "LOC"}],
            "doc": f"d{i // 4}"}


# --- tag schemes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, tag_list, want", [
    ("iob2", ["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    ("iob2", ["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    ("iob1", ["I-PER", "I-PER", "B-PER", "O", "I-LOC"], [("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4)]),
    ("bioes", ["B-ORG", "I-ORG", "E-ORG", "S-LOC", "O"], [("ORG", 0, 2), ("LOC", 3, 3)]),
    ("iob2", ["O", "I-PER", "I-PER"], [("PER", 1, 2)]),  # conlleval's reading of an orphan I-
])
def test_schemes_decode_to_the_same_entities(scheme, tag_list, want):
    assert tags.decode(tag_list, scheme) == want


@pytest.mark.parametrize("scheme, tag_list, problem", [
    ("iob2", ["O", "I-PER"], "tag 2 .* continues no PER entity"),
    ("iob2", ["B-PER", "I-LOC"], "tag 2 .* continues no LOC entity"),
    ("bioes", ["B-PER", "O"], "without its E- tag"),
    ("bioes", ["B-PER", "I-PER"], "has no E- tag"),
])
def test_strict_tags_refuse_broken_entities(scheme, tag_list, problem):
    with pytest.raises(tags.TagError, match=problem):
        tags.decode(tag_list, scheme, strict=True)


def test_a_tag_outside_the_scheme_is_refused_even_when_lenient():
    with pytest.raises(tags.TagError, match="tag 2 .*'E-PER'"):
        tags.decode(["B-PER", "E-PER"], "iob2")
    with pytest.raises(tags.TagError, match="'PER'"):
        tags.decode(["PER"], "iob2")


def test_word_tags_and_labels():
    words = [(0, 3), (4, 7), (8, 12), (13, 15)]
    assert tags.word_tags(words, [("PER", 4, 12)]) == ["O", "B-PER", "I-PER", "O"]
    assert tags.labels({"PER", "LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


# --- word-level data ------------------------------------------------------------------------------

def test_word_level_rows_with_string_tags_become_character_spans(tmp_path, words_of):
    rows = [{"tokens": ["EU", "rejects", "German", "call"], "ner_tags": ["B-ORG", "O", "B-MISC", "O"]}] * 30
    splits = data.load_splits(config(write_jsonl(tmp_path / "w.jsonl", rows)), words_of)
    assert splits.train.texts[0] == "EU rejects German call"
    assert splits.train.entities[0] == [("ORG", 0, 2), ("MISC", 11, 17)]
    assert splits.label_names == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG"]
    assert "word-level" in splits.shape and (len(splits.train), len(splits.validation), len(splits.test)) == (24, 3, 3)


def test_word_level_tag_ids_take_their_names_from_tag_names_or_a_saved_classlabel(tmp_path, words_of):
    rows = [{"tokens": ["Ann", "went", "home"], "ner_tags": [1, 0, 0]}] * 20
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    with pytest.raises(BadInputError, match=r"row 1 of column 'ner_tags' holds tag ids .* --tag-names"):
        data.load_splits(config(path), words_of)
    assert data.load_splits(config(path, tag_names="O,B-PER,I-PER"), words_of).train.entities[0] == [("PER", 0, 3)]

    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"tokens": [r["tokens"] for r in rows], "ner_tags": [r["ner_tags"] for r in rows]}, features=features)}
    ).save_to_disk(str(saved))
    assert data.load_splits(config(saved), words_of).train.entities[0] == [("PER", 0, 3)]


def test_csv_cells_hold_json_lists_or_space_separated_words(tmp_path, words_of):
    path = tmp_path / "w.csv"
    lines = ["tokens,ner_tags"] + ['"[""New"", ""York""]",B-LOC I-LOC'] * 10 + ['"Ann left",B-PER O'] * 10
    path.write_text("\n".join(lines) + "\n")
    found = {tuple(e) for ents in data.load_splits(config(path), words_of).train.entities for e in ents}
    assert found == {("LOC", 0, 8), ("PER", 0, 3)}


def test_bioes_and_iob1_data_are_converted_to_iob2_labels(tmp_path, words_of):
    rows = [{"tokens": ["New", "York", "and", "Oslo"], "ner_tags": ["B-LOC", "E-LOC", "O", "S-LOC"]}] * 20
    splits = data.load_splits(config(write_jsonl(tmp_path / "b.jsonl", rows), tag_scheme="bioes"), words_of)
    assert splits.train.entities[0] == [("LOC", 0, 8), ("LOC", 13, 17)] and splits.label_names == ["O", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("row, column, problem", [
    ({"tokens": ["a", "b"], "ner_tags": ["O"]}, "ner_tags", "has 1 tags for the 2 tokens"),
    ({"tokens": ["a", ""], "ner_tags": ["O", "O"]}, "tokens", "token 2"),
    ({"tokens": 5, "ner_tags": ["O"]}, "tokens", "is not a list of tokens"),
    ({"tokens": "[\"a\", ", "ner_tags": ["O"]}, "tokens", "not a JSON list"),
    ({"tokens": ["a", "b"], "ner_tags": ["O", "X-PER"]}, "ner_tags", "tag 2"),
])
def test_bad_word_level_rows_are_named_by_row_and_column(tmp_path, words_of, row, column, problem):
    rows = [{"tokens": ["Ann", "left"], "ner_tags": ["B-PER", "O"]}] * 20
    rows.insert(6, row)
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadInputError, match=rf"row 7 of column '{column}' .*{problem}.*--skip-bad-rows"):
        data.load_splits(config(path), words_of)
    skipped = data.load_splits(config(path, skip_bad_rows=True), words_of)
    assert skipped.skipped == 1 and sum(map(len, (skipped.train, skipped.validation, skipped.test))) == 20


def test_strict_tags_name_the_row(tmp_path, words_of):
    rows = [{"tokens": ["Ann", "left"], "ner_tags": ["B-PER", "O"]}] * 10 + [{"tokens": ["x", "y"], "ner_tags": ["O", "I-PER"]}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert data.load_splits(config(path), words_of)  # lenient: the orphan I- starts an entity
    with pytest.raises(BadInputError, match=r"row 11 of column 'ner_tags' tag 2 \('I-PER'\) continues no PER"):
        data.load_splits(config(path, strict_tags=True), words_of)


# --- span-level data -------------------------------------------------------------------------------

def test_span_formats_are_detected_and_read_alike(tmp_path, words_of):
    rows = [sentence(i) for i in range(30)]
    spans = data.load_splits(config(write_jsonl(tmp_path / "s.jsonl", rows), entities_column="entities"), words_of)
    doccano = [{"text": r["text"], "label": [[e["start"], e["end"], e["label"]] for e in r["entities"]]} for r in rows]
    by_doccano = data.load_splits(config(write_jsonl(tmp_path / "d.jsonl", doccano), entities_column="label"), words_of)
    studio = [{"id": i, "data": {"text": r["text"]}, "annotations": [
        {"was_cancelled": True, "result": []},
        {"result": [{"type": "labels", "from_name": "label", "to_name": "text",
                     "value": {"start": e["start"], "end": e["end"], "text": "", "labels": [e["label"]]}}
                    for e in r["entities"]]}]} for i, r in enumerate(rows)]
    (tmp_path / "ls.json").write_text(json.dumps(studio))
    by_studio = data.load_splits(config(tmp_path / "ls.json", entities_column="annotations"), words_of)
    assert spans.train.entities == by_doccano.train.entities == by_studio.train.entities
    assert spans.train.texts == by_studio.train.texts and spans.train.entities[0]
    assert "spans" in spans.shape and "doccano" in by_doccano.shape and "label-studio" in by_studio.shape


def test_entity_format_detection():
    assert formats.entity_format([[0, 3, "PER"]]) == "doccano"
    assert formats.entity_format('[{"start": 0, "end": 3, "label": "PER"}]') == "spans"
    assert formats.entity_format([{"start_offset": 0, "end_offset": 3, "label": "PER"}]) == "doccano"
    assert formats.entity_format([{"result": []}]) == "label-studio"
    assert formats.entity_format([]) is None


@pytest.mark.parametrize("entities, problem", [
    ([[4, 7, "PER"], [6, 10, "LOC"]], "overlapping entities"),
    ([[4, 99, "PER"]], "outside the text"),
    ([[5, 7, "PER"]], "splits the word 'Ann'"),
    ([[4, 9, "B-PER"]], "no B-/I- prefix"),
    ([[3, 4, "PER"]], "covers only spaces"),
    ([[4, 7]], "not in the column's doccano format"),
])
def test_bad_spans_are_named_by_row_and_column(tmp_path, words_of, entities, problem):
    rows = [{"text": "met Ann in Oslo", "label": [[4, 7, "PER"]]}] * 20
    rows.insert(2, {"text": "met Ann in Oslo", "label": entities})
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadInputError, match=rf"row 3 of column 'label' .*{problem}"):
        data.load_splits(config(path, entities_column="label"), words_of)
    assert data.load_splits(config(path, entities_column="label", skip_bad_rows=True), words_of).skipped == 1


def test_spaces_at_a_spans_ends_are_trimmed_and_an_empty_text_is_a_bad_row(tmp_path, words_of):
    rows = [{"text": "met Ann in Oslo", "label": [[3, 8, "PER"]]}] * 20 + [{"text": "  ", "label": []}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(BadInputError, match="row 21 of column 'text' is empty"):
        data.load_splits(config(path, entities_column="label"), words_of)
    splits = data.load_splits(config(path, entities_column="label", skip_bad_rows=True), words_of)
    assert splits.train.entities[0] == [("PER", 4, 7)]


def test_missing_columns_and_tweets_are_refused_with_the_fix(tmp_path, words_of):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "y": 1}] * 5)
    with pytest.raises(BadInputError, match="--tokens-column and --tags-column .* or --entities-column"):
        data.load_splits(config(path), words_of)
    with pytest.raises(BadInputError, match="no entities column 'ents'"):
        data.load_splits(config(path, entities_column="ents"), words_of)
    with pytest.raises(BadInputError, match="token-classification"):
        data.load_splits(config("tweets"), words_of)


def test_held_out_refuses_entity_types_the_model_does_not_know(tmp_path, words_of):
    path = write_jsonl(tmp_path / "s.jsonl", [sentence(i) for i in range(20)])
    with pytest.raises(BadInputError, match=r"entity type\(s\) \['LOC'\] that the model does not know"):
        data.held_out(config(path, entities_column="entities"), "all", words_of, ["O", "B-PER", "I-PER"])


# --- --group-column ----------------------------------------------------------------------------------

def _groups_of(split_texts, doc_of):
    return {doc_of[t] for t in split_texts}


def test_group_column_keeps_each_group_in_one_split(tmp_path, words_of):
    rows = [sentence(i) for i in range(80)]  # 20 documents of 4 rows
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    doc_of = {r["text"]: r["doc"] for r in rows}
    splits = data.load_splits(config(path, entities_column="entities", group_column="doc"), words_of)
    seen = [_groups_of(s.texts, doc_of) for s in (splits.train, splits.validation, splits.test)]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert sum(map(len, seen)) == 20 and all(seen)
    again = data.load_splits(config(path, entities_column="entities", group_column="doc"), words_of)
    assert again.test.texts == splits.test.texts  # seeded


def test_group_column_for_text_classification_and_text_generation(tmp_path):
    from deploykit.tasks.classification.data import load_splits as classification_splits
    from deploykit.tasks.generation.data import load_splits as generation_splits

    rows = [(f"text {i} {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg", f"g{i // 5}", f"answer {i}")
            for i in range(100)]
    path = tmp_path / "c.csv"
    path.write_text("text,label,source,completion\n" + "".join(f"{t},{lab},{g},{c}\n" for t, lab, g, c in rows))
    group_of = {t: g for t, _, g, _ in rows}
    splits = classification_splits(DataConfig(data=str(path), group_column="source"))
    seen = [{group_of[t] for t in s.texts} for s in (splits.train, splits.validation, splits.test)]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:]) and sum(map(len, seen)) == 20
    gen = generation_splits(DataConfig(task="text-generation", data=str(path), prompt_column="text",
                                       group_column="source"))
    seen = [{group_of[p] for p in s.prompts} for s in (gen.train, gen.validation, gen.test)]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    with pytest.raises(BadInputError, match="no group column 'nope'"):
        classification_splits(DataConfig(data=str(path), group_column="nope"))


def test_group_column_with_too_few_groups_is_refused(tmp_path):
    from deploykit.tasks.classification.data import load_splits as classification_splits

    path = tmp_path / "c.csv"
    path.write_text("text,label,source\n" + "".join(f"t{i},{'a' if i % 2 else 'b'},one\n" for i in range(30)))
    with pytest.raises(BadInputError, match="too few to split off the test split"):
        classification_splits(DataConfig(data=str(path), group_column="source"))


def test_a_bad_row_exits_2_with_row_and_column_from_the_cli(tmp_path):
    rows = [sentence(i) for i in range(20)]
    rows[4]["entities"] = [{"start": 1, "end": 500, "label": "PER"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    done = subprocess.run([sys.executable, "-m", "deploykit", "train", "--task", "token-classification", "--data",
                           str(path), "--entities-column", "entities", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "row 5 of column 'entities'" in done.stderr and "--skip-bad-rows" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_file_scored_whole_does_not_need_the_training_group_column(tmp_path):
    from deploykit.data import rebuild_config

    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "x"}\n')
    stored = DataConfig(task="token-classification", data=str(tmp_path / "train.csv"), group_column="doc")
    assert rebuild_config(stored, data=str(other), split="all").group_column is None
    assert rebuild_config(stored, data=str(other), split="test").group_column == "doc"
    # ... unless the file's own is named (a reranker's query ids)
    assert rebuild_config(stored, data=str(other), split="all", group_column="qid").group_column == "qid"
    with pytest.raises(BadInputError, match="missing.jsonl does not exist"):  # said before anything loads
        rebuild_config(stored, data=str(tmp_path / "missing.jsonl"), split="all")

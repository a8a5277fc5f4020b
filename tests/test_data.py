"""Data loading, splitting, tokenization and every bad input of the data module."""

import json

import pytest

from deploykit import data
from deploykit.tasks.classification import data as cls_data
from deploykit.config import DataConfig
from deploykit.errors import BadInputError
from factories import LABELS, learnable_rows, write_csv

ROWS = learnable_rows(90)


def _frame():
    import pandas as pd

    return pd.DataFrame({"sentence": [t for t, _ in ROWS], "y": [l for _, l in ROWS]})


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet", "saved"])
def test_every_format_gives_the_same_splits(tmp_path, fmt):
    frame = _frame()
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "json":
        frame.to_json(path, orient="records")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        import datasets

        path = tmp_path / "saved"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    splits = cls_data.load_splits(DataConfig(data=str(path), text_column="sentence", label_column="y"))
    assert splits.label_names == LABELS
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (72, 9, 9)
    # Stratified: every class is in every split, in proportion.
    for split in (splits.train, splits.validation, splits.test):
        assert sorted(set(split.labels)) == [0, 1, 2]
        assert max(split.labels.count(i) for i in range(3)) - min(split.labels.count(i) for i in range(3)) <= 1
    # The same seed gives the same split, whatever the format.
    reference = cls_data.load_splits(DataConfig(data=str(_csv(tmp_path)), text_column="sentence", label_column="y"))
    assert splits.test.texts == reference.test.texts and splits.train.texts == reference.train.texts


def _csv(tmp_path):
    path = tmp_path / "ref.csv"
    _frame().to_csv(path, index=False)
    return path


def test_seed_changes_the_split_and_max_train_samples_subsamples(tmp_path):
    path = _csv(tmp_path)
    a = cls_data.load_splits(DataConfig(data=str(path), text_column="sentence", label_column="y", seed=1))
    b = cls_data.load_splits(DataConfig(data=str(path), text_column="sentence", label_column="y", seed=2))
    assert a.test.texts != b.test.texts
    small = cls_data.load_splits(DataConfig(data=str(path), text_column="sentence", label_column="y",
                                        seed=1, max_train_samples=30))
    assert len(small.train) == 30 and set(small.train.texts) <= set(a.train.texts)
    assert small.test.texts == a.test.texts  # held-out rows never change with subsampling


def test_saved_dataset_with_its_own_splits_is_used_as_is(tmp_path):
    import datasets

    def ds(rows):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [l for _, l in rows]})

    path = tmp_path / "dd"
    datasets.DatasetDict({"train": ds(ROWS[:60]), "validation": ds(ROWS[60:75]), "test": ds(ROWS[75:])}).save_to_disk(str(path))
    splits = cls_data.load_splits(DataConfig(data=str(path)))
    assert splits.validation.texts == [t for t, _ in ROWS[60:75]]
    assert splits.test.texts == [t for t, _ in ROWS[75:]]


def test_builtin_tweets_corpus():
    splits = cls_data.load_splits(DataConfig(data="tweets", max_train_samples=500))
    assert splits.label_names == ["negative", "neutral", "positive"]
    assert len(splits.train) == 500
    assert len(splits.validation) + len(splits.test) == pytest.approx(0.2 * 38158, abs=2)
    assert len(splits.data_sha256) == 64


def _bad(tmp_path, content: str, name="d.csv", **cfg):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadInputError) as err:
        cls_data.load_splits(DataConfig(data=str(path), **cfg))
    return str(err.value)


def test_bad_inputs_name_the_problem(tmp_path):
    assert "does not exist" in str(pytest.raises(BadInputError, cls_data.load_splits,
                                                 DataConfig(data=str(tmp_path / "nope.csv"))).value)
    assert "unknown data format" in _bad(tmp_path, "x", name="d.xlsx")
    assert "no text column 'text'" in _bad(tmp_path, "body,label\na,b\n")
    assert "set --text-column" in _bad(tmp_path, "body,label\na,b\n")
    assert "no label column 'label'" in _bad(tmp_path, "text,y\na,b\n")
    assert "is empty" in _bad(tmp_path, "")
    assert "has no rows" in _bad(tmp_path, "text,label\n")
    rows = "text,label\n" + "".join(f"t{i},{LABELS[i % 3]}\n" for i in range(30))
    assert "row 3 of column 'text' is empty" in _bad(tmp_path, rows.replace("t2,", " ,"))
    assert "row 4 has no label" in _bad(tmp_path, rows.replace("t3,negative", "t3,"))
    assert "fewer than 3 rows" in _bad(tmp_path, rows + "lonely,surprise\n")
    assert "not UTF-8" in str(pytest.raises(BadInputError, cls_data.load_splits, DataConfig(
        data=str(_latin1(tmp_path)))).value)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": 5 if i == 7 else f"t{i}", "label": LABELS[i % 3]}) + "\n"
                             for i in range(30)))
    assert "row 8 of column 'text' is not text" in str(
        pytest.raises(BadInputError, cls_data.load_splits, DataConfig(data=str(jsonl))).value)


def _latin1(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(("text,label\n" + "".join(f"caf\xe9 {i},{LABELS[i % 3]}\n" for i in range(30))).encode("latin-1"))
    return path


def test_label_unseen_in_training_is_an_error(tmp_path):
    import datasets

    def ds(rows):
        return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [l for _, l in rows]})

    path = tmp_path / "dd"
    datasets.DatasetDict({"train": ds(ROWS[:60]), "test": ds(ROWS[60:] + [("odd one", "surprise")])}).save_to_disk(str(path))
    with pytest.raises(BadInputError, match=r"test split has label\(s\) \['surprise'\]"):
        cls_data.load_splits(DataConfig(data=str(path)))


def test_dynamic_padding_and_length_grouping(tokenizer):
    split = cls_data.Split(["short", "a much longer text with many more words in it than the other", "mid size text"],
                       [0, 1, 2])
    rows = cls_data.tokenize(tokenizer, split, max_length=8)
    assert [len(r["input_ids"]) for r in rows] == [3, 8, 5]  # truncated to max_length, unpadded
    batch = cls_data.make_collator(tokenizer)([rows[0], rows[2]])
    assert batch["input_ids"].shape == (2, 5)  # padded to the longest row of the batch only
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id and batch["input_ids"][0, 2] == tokenizer.sep_token_id

    lengths = [i % 50 + 1 for i in range(400)]
    grouped = data.batch_order(lengths, 8, 0, 0, group_by_length=True)
    plain = data.batch_order(lengths, 8, 0, 0)
    assert sorted(i for b in grouped for i in b) == list(range(400))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(plain) / 3
    assert data.batch_order(lengths, 8, 1, 0) != plain  # a new epoch reshuffles
    assert data.batch_order(lengths, 8, 0, 0) == plain  # deterministic in (seed, epoch)
    halves = [data.batch_order(lengths, 8, 0, 0, rank=r, world_size=2) for r in (0, 1)]
    assert not set(i for b in halves[0] for i in b) & set(i for b in halves[1] for i in b)

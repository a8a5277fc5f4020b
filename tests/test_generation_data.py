"""text-generation data: prompt/completion and chat rows, the prompt masked from the loss,
left truncation, packing, bad rows named; BLEU/chrF equal sacrebleu's own scores."""

import json
import os
import subprocess
import sys

import pytest

from deploykit import train
from deploykit.tasks.generation import data as gen_data
from deploykit.tasks.generation import decoding as generation, prompts
from deploykit.config import DataConfig, TrainConfig
from deploykit.errors import BadInputError, ConfigError
from factories import lm_tokenizer, translation_rows

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tokenizer():
    return prompts.prepare_tokenizer(lm_tokenizer(), "test")


def _pairs(*rows):
    return gen_data.Pairs([p for p, _ in rows], [c for _, c in rows])


def test_prompt_is_masked_and_eos_ends_the_completion(tokenizer):
    examples = prompts.encode(tokenizer, _pairs(("translate: red cat =", " rot katze")), max_length=64)
    row, n = examples.rows[0], examples.prompt_lengths[0]
    prompt = tokenizer("translate: red cat =")["input_ids"]
    completion = tokenizer(" rot katze", add_special_tokens=False)["input_ids"]
    assert prompt[0] == tokenizer.bos_token_id and n == len(prompt)
    assert row["input_ids"] == prompt + completion + [tokenizer.eos_token_id]
    assert row["labels"] == [-100] * len(prompt) + completion + [tokenizer.eos_token_id]
    assert examples.prompts() == [prompt] and examples.completion_lengths() == [len(completion) + 1]


def test_loss_ignores_the_prompt_tokens_targets(tokenizer):
    import torch

    # Two prompts of the same token length with different tokens, the same completion: only the
    # prompt positions' targets differ. With the same logits the loss is the same; a different
    # completion changes it.
    a = prompts.encode(tokenizer, _pairs(("translate: red cat =", " rot katze")), 64).rows[0]
    b = prompts.encode(tokenizer, _pairs(("translate: dog sun =", " rot katze")), 64).rows[0]
    c = prompts.encode(tokenizer, _pairs(("translate: red cat =", " hund sonne")), 64).rows[0]
    assert len(a["input_ids"]) == len(b["input_ids"]) == len(c["input_ids"])
    assert a["input_ids"] != b["input_ids"]
    torch.manual_seed(0)
    logits = torch.randn(1, len(a["input_ids"]), len(tokenizer))

    def loss(row):
        return float(generation.completion_loss(logits, torch.tensor([row["labels"]])))

    assert loss(a) == loss(b)
    assert loss(a) != loss(c)
    # What an unmasked loss (every next token) would give differs between a and b.
    unmasked = [float(generation.completion_loss(logits, torch.tensor([r["input_ids"]]))) for r in (a, b)]
    assert unmasked[0] != unmasked[1]


def test_long_prompts_lose_their_left_and_keep_bos(tokenizer):
    long_prompt = "translate: " + " ".join(["red cat"] * 40) + " ="
    examples = prompts.encode(tokenizer, _pairs((long_prompt, " rot"), ("translate: red =", " rot")), max_length=16)
    row, n = examples.rows[0], examples.prompt_lengths[0]
    full = tokenizer(long_prompt)["input_ids"]
    answer = tokenizer(" rot", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(row["input_ids"]) == 16 and examples.truncated_prompts == 1
    assert row["input_ids"][:n] == [tokenizer.bos_token_id] + full[len(full) - (n - 1):]  # the prompt's end kept
    assert row["input_ids"][n:] == answer
    # A completion longer than the whole budget is cut (no EOS: it did not end), one prompt token kept.
    cut = prompts.encode(tokenizer, _pairs(("translate: red =", " rot" * 40)), max_length=16)
    assert cut.cut_completions == 1 and cut.prompt_lengths == [1] and len(cut.rows[0]["input_ids"]) == 16
    assert tokenizer.eos_token_id not in cut.rows[0]["input_ids"]


def test_packing_keeps_each_rows_tokens_and_labels(tokenizer):
    examples = prompts.encode(tokenizer, gen_data.Pairs(*zip(*translation_rows(20))), max_length=64)
    packs = prompts.pack(examples.rows, max_length=40)
    assert len(packs) < len(examples.rows)
    assert all(len(p["input_ids"]) <= 40 for p in packs)
    flat = [t for p in packs for t in p["labels"]]
    assert flat == [t for r in examples.rows for t in r["labels"]]
    assert [t for p in packs for t in p["input_ids"]] == [t for r in examples.rows for t in r["input_ids"]]


def test_chat_rows_are_rendered_with_the_chat_template(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "system", "content": "translate"}, {"role": "user", "content": "red cat"},
                          {"role": "assistant", "content": "rot katze"}], "source": "a"}] * 30
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = gen_data.load_splits(DataConfig(task="text-generation", data=str(path)))
    assert len(splits.train) == 24 and len(splits.validation) == 3 and len(splits.test) == 3
    assert splits.train.completions[0] == "rot katze" and splits.train.prompts[0][-1]["role"] == "user"
    examples = prompts.encode(tokenizer, splits.train, max_length=64)
    rendered = "<|system|>translate\n<|user|>red cat\n<|assistant|>"
    assert examples.prompts()[0] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_generation_splits_are_seeded_80_10_10_and_carry_slices(tmp_path):
    import pandas as pd

    rows = translation_rows(200)
    frame = pd.DataFrame({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows],
                          "row": [f"r{i}" for i in range(200)]})
    frame.to_parquet(tmp_path / "pairs.parquet")
    cfg = DataConfig(task="text-generation", data=str(tmp_path / "pairs.parquet"))
    one, two = gen_data.load_splits(cfg, slice_column="row"), gen_data.load_splits(cfg, slice_column="row")
    assert (len(one.train), len(one.validation), len(one.test)) == (160, 20, 20)
    # A partition of the rows (each keeps its own slice value), the same for the same seed.
    ids = [set(one.get(name).slices) for name in ("train", "validation", "test")]
    assert sum(map(len, ids)) == 200 and set.union(*ids) == {f"r{i}" for i in range(200)}
    assert one.test.slices == two.test.slices and one.test.prompts == two.test.prompts
    assert all(rows[int(r[1:])] == (p, c) for r, p, c in zip(one.test.slices, one.test.prompts, one.test.completions))
    other = gen_data.load_splits(DataConfig(task="text-generation", data=str(tmp_path / "pairs.parquet"), seed=1), "row")
    assert other.test.slices != one.test.slices


@pytest.mark.parametrize("content, name, expected", [
    ("prompt,completion\ntranslate: red =,rot\ntranslate: cat =,\n", "empty.csv",
     ["row 2 of column 'completion' is empty"]),
    ('{"prompt": "translate: red =", "completion": "rot"}\n{"prompt": 7, "completion": "katze"}\n', "number.jsonl",
     ["row 2 of column 'prompt' is not text"]),
    ("question,completion\nred,rot\n", "columns.csv", ["neither a prompt column 'prompt'", "--prompt-column"]),
    ('{"messages": [{"role": "user", "content": "red"}]}\n', "chat.jsonl",
     ["row 1 of column 'messages'", "assistant"]),
    ('{"messages": "hello"}\n', "text.jsonl", ["row 1 of column 'messages' is text but not a JSON list"]),
])
def test_bad_rows_are_named_with_row_and_column(tmp_path, content, name, expected):
    data_file = tmp_path / name
    data_file.write_text(content)
    with pytest.raises(BadInputError) as caught:
        gen_data.load_splits(DataConfig(task="text-generation", data=str(data_file)))
    for text in expected:
        assert text in str(caught.value)


def test_a_bad_row_exits_2_before_anything_is_written(tmp_path, decoder_dirs):
    data_file = tmp_path / "pairs.csv"
    data_file.write_text("prompt,completion\n" + "".join(f"{p},{c}\n" for p, c in translation_rows(40))
                         + "translate: red =,\n")
    done = subprocess.run([sys.executable, "-m", "deploykit", "train", "--task", "text-generation", "--data",
                           str(data_file), "--model", str(decoder_dirs["llama"]), "--out", str(tmp_path / "run")],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 2
    assert "row 41 of column 'completion' is empty" in done.stderr
    assert not (tmp_path / "run").exists()


def test_options_that_do_not_fit_the_task_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="macro_f1 does not apply to --task text-generation"):
        TrainConfig(task="text-generation", metric="macro_f1")
    with pytest.raises(ConfigError, match="bleu does not apply to --task text-classification"):
        TrainConfig(metric="bleu")
    with pytest.raises(ConfigError, match="invalid --class-weights"):
        TrainConfig(task="text-generation", class_weights="auto")
    with pytest.raises(ConfigError, match="invalid --packing"):
        TrainConfig(packing=True)
    assert TrainConfig(task="text-generation").metric == "loss" and TrainConfig().metric == "macro_f1"


def test_a_hub_name_is_fetched_by_transformers_and_offline_says_so(tmp_path):
    data_file = tmp_path / "pairs.csv"
    data_file.write_text("prompt,completion\n" + "".join(f"{p},{c}\n" for p, c in translation_rows(40)))
    with pytest.raises(BadInputError, match="cannot fetch it from the Hugging Face Hub"):
        train.run(TrainConfig(task="text-generation", data=str(data_file), model="nobody-here/no-such-model",
                              out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_bleu_and_chrf_are_sacrebleu_corpus_scores():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog ran in the park today", "hello world", ""]
    refs = ["the cat sat on a mat", "the dog ran in the park", "hello world", "nothing"]
    metrics = generation.text_metrics(hyps, refs)
    assert metrics["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert 0 < metrics["bleu"] < 100 and metrics["exact_match"] == 0.25 and metrics["n"] == 4
    assert metrics["sacrebleu"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert generation.sentence_bleu(hyps[0], refs[0]) == sacrebleu.sentence_bleu(hyps[0], [refs[0]]).score

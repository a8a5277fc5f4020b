"""Prompt/completion examples for decoder-only language models (``--task text-generation``).

One training example is ``prompt tokens + completion tokens + EOS``. Its labels are -100 over
the prompt, so the loss is computed on the completion and the EOS only: the model learns to
answer, and to stop, not to repeat prompts. A chat row (a list of messages) is rendered with
the tokenizer's chat template up to the assistant's turn, and its last message is the
completion. A row longer than ``--max-length`` loses tokens from the prompt's left (the end of
the prompt, next to the answer, matters most); the count is reported. ``--packing`` puts
several short examples into one sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deploykit.tasks.generation.data import Pairs
from deploykit.errors import BadInputError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a token the loss skips (PyTorch's cross_entropy default)


@dataclass
class Examples:
    """Tokenized examples of one split, in row order."""

    rows: list[dict[str, list[int]]]  # input_ids, attention_mask, labels
    prompt_lengths: list[int]         # tokens of each row's (truncated) prompt
    truncated_prompts: int = 0        # rows whose prompt lost tokens on the left
    cut_completions: int = 0          # rows whose completion alone did not fit (no EOS kept)

    def prompts(self) -> list[list[int]]:
        """Each row's prompt tokens: what generation starts from."""
        return [row["input_ids"][:n] for row, n in zip(self.rows, self.prompt_lengths)]

    def completion_lengths(self) -> list[int]:
        """Tokens of each row's reference completion, its EOS included."""
        return [len(row["input_ids"]) - n for row, n in zip(self.rows, self.prompt_lengths)]


def prepare_tokenizer(tokenizer: Any, model_name: str) -> Any:
    """Check the tokenizer can end a completion, and give it a pad token and right padding.

    Raises:
        BadInputError: The tokenizer has no EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise BadInputError(f"the tokenizer of --model {model_name} has no EOS token, so a completion "
                            f"cannot end; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss alike, so any token serves; EOS is the usual one.
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token; padding with its EOS token %r", tokenizer.eos_token)
    tokenizer.padding_side = "right"  # training batches; generation pads on the left itself
    return tokenizer


def _prompt_ids(tokenizer: Any, prompts: list[Any]) -> list[list[int]]:
    """Token ids of each prompt: plain text with the tokenizer's special tokens (e.g. BOS), or a
    chat rendered with its template up to the assistant's turn."""
    chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if chats and not getattr(tokenizer, "chat_template", None):
        raise BadInputError("the data has chat messages but the tokenizer has no chat template; "
                            "give prompt/completion columns instead, or a model whose tokenizer "
                            "defines chat_template")
    texts = [p if isinstance(p, str) else
             tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    ids: list[list[int]] = [[] for _ in prompts]
    plain = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    # A rendered template already holds its special tokens: no second BOS.
    for index, special in ((plain, True), (chats, False)):
        if index:
            encoded = tokenizer([texts[i] for i in index], add_special_tokens=special)["input_ids"]
            for i, row in zip(index, encoded):
                ids[i] = list(row)
    return ids


def _left_truncate(prompt: list[int], budget: int, bos: int | None) -> list[int]:
    """The last ``budget`` tokens of a prompt, keeping a leading BOS if it had one."""
    if bos is not None and prompt and prompt[0] == bos and budget > 1:
        return [bos] + prompt[len(prompt) - budget + 1:]
    return prompt[len(prompt) - budget:]


def encode(tokenizer: Any, pairs: Pairs, max_length: int) -> Examples:
    """Tokenize prompt/completion pairs into training examples with the prompt masked.

    Args:
        tokenizer: A tokenizer passed through ``prepare_tokenizer``.
        pairs: The rows.
        max_length: Most tokens of prompt + completion + EOS.

    Returns:
        The examples (unpadded) and how many rows were truncated.

    Raises:
        BadInputError: Chat rows with a tokenizer that has no chat template.
    """
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    prompts = _prompt_ids(tokenizer, pairs.prompts)
    completions = tokenizer(list(pairs.completions), add_special_tokens=False)["input_ids"]
    examples = Examples([], [])
    for prompt, completion in zip(prompts, completions):
        answer = list(completion) + [eos]
        if len(answer) > max_length - 1:  # keep one prompt token to predict the answer from
            answer = answer[:max_length - 1]
            examples.cut_completions += 1
        budget = max_length - len(answer)
        if len(prompt) > budget:
            prompt = _left_truncate(prompt, budget, bos)
            examples.truncated_prompts += 1
        examples.rows.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                              "labels": [IGNORE_INDEX] * len(prompt) + answer})
        examples.prompt_lengths.append(len(prompt))
    return examples


def report_truncation(examples: Examples, split: str, max_length: int) -> None:
    """Log how many rows lost tokens to --max-length."""
    if examples.truncated_prompts:
        log.warning("%s: %d of %d prompts were cut from the left to fit --max-length %d", split,
                    examples.truncated_prompts, len(examples.rows), max_length)
    if examples.cut_completions:
        log.warning("%s: %d of %d completions alone exceed --max-length %d and were cut (without "
                    "their EOS); raise --max-length", split, examples.cut_completions, len(examples.rows),
                    max_length)


def pack(rows: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate consecutive examples into sequences of at most ``max_length`` tokens.

    Each example keeps its own labels (prompts masked); a later example attends to the earlier
    ones in its pack, as in TRL's packing without position resets. The packs are fixed once,
    so the batch order of every epoch (and a resumed run) sees the same ones.
    """
    packs: list[dict[str, list[int]]] = []
    for row in rows:
        if packs and len(packs[-1]["input_ids"]) + len(row["input_ids"]) <= max_length:
            for key in ("input_ids", "attention_mask", "labels"):
                packs[-1][key] = packs[-1][key] + row[key]
        else:
            packs.append({key: list(row[key]) for key in ("input_ids", "attention_mask", "labels")})
    return packs


def make_collator(tokenizer: Any):
    """Right-padded batches: pad ids for the inputs, -100 for the labels (transformers' collator)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

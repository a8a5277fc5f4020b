"""The manifest head of a text-generation artifact: cache layout, special tokens, chat template
and generation defaults.

Standard library only (plus the manifest's typed reader): the torch-free serving side reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from deploykit.errors import BadInputError
from deploykit.manifest import CONFIG, Fields


@dataclass(frozen=True)
class CacheLayout:
    """The decoder's key/value cache as its graph takes and returns it: for each layer, a key and
    a value tensor [batch, kv_heads, tokens, head_size] named by ``past``/``present`` with
    ``{layer}`` and ``{kind}`` (key or value) filled in."""

    layers: int
    kv_heads: int
    head_size: int
    dtype: str = "float32"
    past: str = "past_key_values.{layer}.{kind}"
    present: str = "present.{layer}.{kind}"

    KINDS: ClassVar[tuple[str, str]] = ("key", "value")

    def past_names(self) -> list[str]:
        """The cache inputs in layer order, key before value."""
        return [self.past.format(layer=i, kind=k) for i in range(self.layers) for k in self.KINDS]

    def present_names(self) -> list[str]:
        """The cache outputs, in the same order as ``past_names``."""
        return [self.present.format(layer=i, kind=k) for i in range(self.layers) for k in self.KINDS]

    def bytes_per_token(self) -> int:
        """Cache bytes one token of one sequence takes (keys and values of every layer)."""
        width = 2 if self.dtype in ("float16", "bfloat16") else 4
        return 2 * self.layers * self.kv_heads * self.head_size * width

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Generation:
    """The fields of a ``text-generation`` artifact (a decoder-only language model exported with
    its key/value cache): the cache layout, the special tokens, the chat template (or None) and
    the generation defaults a request falls back on."""

    TASK: ClassVar[str] = "text-generation"
    # Inputs besides the cache: tokens, their mask over cache + new tokens, their positions.
    INPUTS: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "position_ids")
    DEFAULTS: ClassVar[dict[str, Any]] = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "top_k": 0}

    cache: CacheLayout
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None = None
    chat_template: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=lambda: dict(Generation.DEFAULTS))
    output: str = "logits"

    @classmethod
    def from_json(cls, fields: Fields, inputs: tuple[str, ...]) -> "Generation":
        c = Fields(fields.get("cache", dict), fields.where, "cache.")
        cache = CacheLayout(layers=c.integer("layers", 1), kv_heads=c.integer("kv_heads", 1),
                            head_size=c.integer("head_size", 1), dtype=c.get("dtype", str),
                            past=c.get("past", str), present=c.get("present", str))
        if cache.dtype not in ("float32", "float16"):
            c.fail("dtype", f"is {cache.dtype!r}; this deploykit serves float32 or float16 caches")
        tokens = Fields(fields.get("tokens", dict), fields.where, "tokens.")
        eos = tokens.get("eos", list)
        if not eos or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in eos):
            tokens.fail("eos", "must be a non-empty list of token ids")
        bos = tokens.get("bos", (int, type(None)), required=False)
        template = fields.get("chat_template", (str, type(None)), required=False)
        g = Fields(fields.get("generation", dict), fields.where, "generation.")
        defaults = {"max_new_tokens": g.integer("max_new_tokens", 1),
                    "temperature": float(g.get("temperature", (int, float))),
                    "top_p": float(g.get("top_p", (int, float))), "top_k": g.integer("top_k", 0)}
        head = cls(cache=cache, vocab_size=fields.integer("vocab_size", 1), eos_token_ids=tuple(eos),
                   pad_token_id=tokens.integer("pad", 0), bos_token_id=bos, chat_template=template,
                   defaults=defaults, output=fields.get("output", str))
        expected = {"input_ids", "attention_mask", *cache.past_names()}
        unknown = [n for n in inputs if n not in expected and n not in cls.INPUTS]
        if unknown or not expected <= set(inputs):
            fields.fail("inputs", f"is {list(inputs)}; a {cls.TASK} graph takes input_ids, attention_mask, "
                                  f"optionally position_ids, and the cache {cache.past_names()}")
        return head

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "vocab_size": self.vocab_size, "cache": self.cache.to_json(),
                "tokens": {"eos": list(self.eos_token_ids), "pad": self.pad_token_id, "bos": self.bos_token_id},
                "chat_template": self.chat_template, "generation": dict(self.defaults)}

    def check_config(self, config: Any, where: Path, max_length: int) -> None:
        """Cross-check the cache depth, vocabulary and context against the copied ``config.json``.

        Raises:
            BadInputError: If the layer count or vocabulary size differ, or ``max_length`` is more
                than the model's positions.
        """
        if not isinstance(config, dict):
            raise BadInputError(f"{where}: {CONFIG} is not a JSON object; re-export the artifact")
        positions = config.get("max_position_embeddings", config.get("n_positions"))
        if isinstance(positions, int) and max_length > positions:
            raise BadInputError(f"{where}: 'max_length' {max_length} is more than the model's {positions} "
                                f"positions ({CONFIG}); re-export the artifact")
        layers = config.get("num_hidden_layers", config.get("n_layer"))
        vocab = config.get("vocab_size")
        if (layers is not None and layers != self.cache.layers) or (vocab is not None and vocab != self.vocab_size):
            raise BadInputError(f"{where}: 'cache.layers' {self.cache.layers} / 'vocab_size' {self.vocab_size} "
                                f"differ from {CONFIG}'s {layers} / {vocab}; re-export the artifact with "
                                "'deploykit export'")


Head = Generation

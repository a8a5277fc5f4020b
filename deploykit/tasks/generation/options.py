"""The options text-generation adds to the stage configs, and its rules.

``OPTIONS`` maps a config class of ``deploykit.config`` to the dataclass whose fields that config
gains; a class's ``validate`` checks its ranges, and ``check`` holds the rules of a config that
runs text-generation. Imports only the option helpers: ``deploykit.config`` imports this module
while it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.options import opt, require, require_int_list


@dataclass
class Data:
    prompt_column: str = opt("prompt", "text-generation: the column that holds the prompt.")
    completion_column: str = opt("completion", "text-generation: the column that holds the "
                                 "completion the model learns to write after the prompt.")
    messages_column: str = opt("messages", "text-generation: a column of chat conversations "
                               "([{role, content}, ...], the last message the assistant's "
                               "answer), rendered with the tokenizer's chat template; used "
                               "when the data has no --prompt-column.")


@dataclass
class Train:
    packing: bool = opt(False, "text-generation: pack several short rows into one sequence of up "
                        "to --max-length tokens (fewer, fuller batches; rows in a pack attend "
                        "to the rows before them).")
    max_new_tokens: int = opt(64, "text-generation with --metric bleu: most tokens generated per "
                              "validation prompt.")

    def validate(self) -> None:
        require(self.max_new_tokens > 0, "max_new_tokens", "must be positive")


@dataclass
class HeldOut:
    prompt_column: str | None = opt(None, "text-generation: prompt column (default: the checkpoint's).")
    completion_column: str | None = opt(None, "text-generation: completion column (default: the "
                                        "checkpoint's).")
    messages_column: str | None = opt(None, "text-generation: chat messages column (default: the "
                                      "checkpoint's).")


@dataclass
class Eval:
    max_new_tokens: int = opt(64, "text-generation: most tokens generated per prompt (greedy).")

    def validate(self) -> None:
        require(self.max_new_tokens > 0, "max_new_tokens", "must be positive")


@dataclass
class Parity:
    generation_tokens: int = opt(32, "text-generation: greedy tokens compared with PyTorch's per "
                                 "prompt (fp32 and fused variants must match on every prompt, "
                                 "see --fp32-min-agreement).")
    int8_generation_tokens: int = opt(16, "text-generation: the first tokens an INT8 variant must "
                                      "match PyTorch's on (see --int8-min-prompt-agreement).")
    int8_min_prompt_agreement: float = opt(0.95, "text-generation: smallest share of prompts whose "
                                           "first --int8-generation-tokens greedy tokens equal "
                                           "PyTorch's, for INT8 variants.")
    int8_max_bleu_drop: float = opt(1.0, "text-generation: largest BLEU loss (points, 0-100 scale) "
                                    "allowed for INT8 variants against PyTorch's own generations.")

    def validate(self) -> None:
        require(self.generation_tokens > 0, "generation_tokens", "must be a positive number of tokens")
        require(0 < self.int8_generation_tokens <= self.generation_tokens, "int8_generation_tokens",
                f"must be in [1, --generation-tokens {self.generation_tokens}]")
        require(0 <= self.int8_min_prompt_agreement <= 1, "int8_min_prompt_agreement",
                "must be a fraction in [0, 1]")
        require(0 <= self.int8_max_bleu_drop <= 100, "int8_max_bleu_drop", "must be in [0, 100] BLEU points")


@dataclass
class Export:
    int8_block_size: int = opt(32, "text-generation: weights per quantization block of the INT8 "
                               "weight-only MatMuls (MatMulNBits; a power of two, at least 16).")
    int8_compute: str = opt("int8", "text-generation: how the INT8 MatMuls compute: int8 (each "
                            "token's activations quantized on their own, per block: onnxruntime's "
                            "accuracy_level 4, the fast kernels) or float (weights dequantized, "
                            "float activations: slower on CPU).", choices=("int8", "float"))

    def validate(self) -> None:
        require(self.int8_block_size >= 16 and self.int8_block_size & (self.int8_block_size - 1) == 0,
                "int8_block_size", f"{self.int8_block_size} is not a power of two >= 16")
        require(self.int8_compute in ("int8", "float"), "int8_compute", "choose int8 or float")


@dataclass
class Service:
    max_cache_tokens: int = opt(16384, "text-generation: bound on the batch's key/value cache, in "
                                "tokens (sequences x the longest prompt + max_new_tokens); a "
                                "sequence waits for room, one that can never fit is a 400 error.")
    max_new_tokens: int = opt(1024, "text-generation: the largest max_new_tokens a request may ask "
                              "for; more is a 400 error.")

    def validate(self) -> None:
        for name in ("max_cache_tokens", "max_new_tokens"):
            require(getattr(self, name) > 0, name, "must be a positive number")


@dataclass
class Predict:
    max_new_tokens: int | None = opt(None, "text-generation: most tokens generated per prompt "
                                     "(default: the manifest's generation default).")
    temperature: float = opt(0.0, "text-generation: sampling temperature (0 = greedy).")
    seed: int = opt(0, "text-generation: seed of sampling (row i of its file samples with seed + i, under "
                   "either engine).")

    def validate(self) -> None:
        require(self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens", "must be positive")
        require(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")


@dataclass
class BenchOffline:
    generation_batch_sizes: str = opt("1,8,32", "text-generation: sequences generated together per call.")
    prompt_tokens: int = opt(128, "text-generation: tokens of every prompt.")
    new_tokens: int = opt(64, "text-generation: tokens generated per sequence (EOS ignored).")

    def validate(self) -> None:
        require_int_list(self.generation_batch_sizes, "generation_batch_sizes")
        require(self.prompt_tokens > 0 and self.new_tokens > 0, "prompt_tokens",
                "--prompt-tokens and --new-tokens must be positive")


@dataclass
class BenchOnline:
    new_tokens: int = opt(64, "--protocol generate: tokens generated per request (EOS ignored).")

    def validate(self) -> None:
        require(self.new_tokens > 0, "new_tokens", "must be positive")


OPTIONS = {"DataConfig": Data, "TrainConfig": Train, "HeldOutConfig": HeldOut, "EvalConfig": Eval,
           "ParityConfig": Parity, "ExportConfig": Export, "ServiceConfig": Service, "PredictConfig": Predict,
           "BenchOfflineConfig": BenchOffline, "BenchOnlineConfig": BenchOnline}


def check(cfg: Any, stage: str) -> None:
    """The rules of a ``stage`` config (its class name) that runs text-generation.

    Raises:
        ConfigError: Naming the flag to change.
    """
    if stage == "ExportConfig":
        require(cfg.quantize != "static", "quantize",
                "static is for text-classification; a text-generation export quantizes weights only "
                "(--quantize auto or dynamic, the default) or not at all (none)")
    if stage == "BenchOfflineConfig":
        require("optimum-quantized" not in cfg.engine_list, "engines",
                "optimum-quantized quantizes a classifier with Optimum; for a text-generation artifact "
                "use pytorch, optimum and runtime")

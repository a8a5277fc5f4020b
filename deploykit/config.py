"""Typed, validated configuration: one dataclass per stage, flat YAML in and out.

A config is built in three layers: the dataclass defaults, then a flat YAML file whose keys
are the command's long flag names with underscores (``max_train_samples: 4000``), then the
command-line flags. Unknown keys are an error, and every validation message names the option
to change.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deploykit.errors import ConfigError
from deploykit.manifest import name_problem

C = TypeVar("C")

BUILTIN_DATA = ("tweets",)
BUILTIN_MODELS = ("minilm",)
CLASSIFICATION = "text-classification"
GENERATION = "text-generation"
TASKS = (CLASSIFICATION, GENERATION)
STRATEGIES = ("full", "ffn", "layerwise", "head", "lora")
# Validation metrics that can pick the best checkpoint, per task (the first is the default).
TASK_METRICS = {CLASSIFICATION: ("macro_f1", "accuracy", "weighted_f1", "loss"),
                GENERATION: ("loss", "bleu")}
METRICS = ("macro_f1", "accuracy", "weighted_f1", "loss", "bleu")
SPLITS = ("test", "validation", "all")


def opt(default: Any, help: str, *, choices: tuple | None = None, positional: bool = False) -> Any:
    """A dataclass field that carries its command-line help (used by ``cli``)."""
    meta = {"help": help, "choices": choices, "positional": positional}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"invalid --{option.replace('_', '-')}: {message}")


@dataclass
class DataConfig:
    """Where the labelled text comes from and how it is split and tokenized."""

    task: str = opt(CLASSIFICATION, "What the model learns: text-classification (a label per "
                    "text; encoders) or text-generation (a completion per prompt; decoder-only "
                    "language models).", choices=TASKS)
    data: str = opt("tweets", "Data source: a CSV/JSON/JSONL/Parquet file, a folder saved with "
                    "datasets.save_to_disk, or the built-in name 'tweets'.")
    text_column: str = opt("text", "Name of the column that holds the text.")
    label_column: str = opt("label", "Name of the column that holds the label "
                            "(the built-in 'tweets' data uses its own 'sentiment' column).")
    prompt_column: str = opt("prompt", "text-generation: the column that holds the prompt.")
    completion_column: str = opt("completion", "text-generation: the column that holds the "
                                 "completion the model learns to write after the prompt.")
    messages_column: str = opt("messages", "text-generation: a column of chat conversations "
                               "([{role, content}, ...], the last message the assistant's "
                               "answer), rendered with the tokenizer's chat template; used "
                               "when the data has no --prompt-column.")
    val_ratio: float = opt(0.1, "Fraction of rows held out for validation when the source has "
                           "no validation split.")
    test_ratio: float = opt(0.1, "Fraction of rows held out for the test split when the source "
                            "has no test split.")
    seed: int = opt(42, "Random seed for the split, the shuffling, dropout and initialization.")
    max_train_samples: int | None = opt(None, "Subsample the training split to this many rows "
                                        "(after splitting; validation and test stay whole).")
    max_length: int = opt(128, "Truncate every text (text-generation: prompt + completion, "
                          "the prompt cut from its left) to this many tokens.")

    def __post_init__(self) -> None:
        _require(self.task in TASKS, "task", f"choose one of {', '.join(TASKS)}")
        _require(0 < self.val_ratio < 1, "val_ratio", f"{self.val_ratio} is not between 0 and 1")
        _require(0 < self.test_ratio < 1, "test_ratio", f"{self.test_ratio} is not between 0 and 1")
        _require(self.val_ratio + self.test_ratio < 1, "val_ratio",
                 "val_ratio + test_ratio must leave rows for training")
        _require(self.max_train_samples is None or self.max_train_samples > 0,
                 "max_train_samples", "must be a positive number of rows")
        _require(8 <= self.max_length <= 8192, "max_length", f"{self.max_length} is not in [8, 8192]")


@dataclass
class TrainConfig(DataConfig):
    """Fine-tuning hyper-parameters. The defaults are tuned for the built-in MiniLM and tweets."""

    model: str = opt("minilm", "Pretrained model: a local Hugging Face folder, a Hugging Face Hub "
                     "name (owner/name; fetched by transformers, safetensors only), or the "
                     "built-in name 'minilm' (the packaged MiniLM-L6).")
    out: str = opt("runs/train", "Run folder to write (checkpoint/, last/, metrics.jsonl).")
    strategy: str = opt("full", "What to train: full (every weight), ffn (feed-forward sublayers "
                        "+ head), layerwise (gradual unfreezing from the top), head (task head "
                        "only; lm_head for text-generation), lora (low-rank adapters via peft, "
                        "merged into the weights of the saved checkpoint).", choices=STRATEGIES)
    epochs: float = opt(2.0, "Number of passes over the training split.")
    max_steps: int | None = opt(None, "Stop after this many optimizer steps (overrides --epochs).")
    batch_size: int = opt(32, "Rows per micro-batch (per process under torchrun).")
    eval_batch_size: int = opt(128, "Rows per batch during evaluation.")
    lr: float = opt(1.5e-4, "Peak learning rate of AdamW (after warm-up).")
    weight_decay: float = opt(0.01, "AdamW weight decay (never applied to biases and LayerNorm).")
    layer_lr_decay: float = opt(1.0, "Multiply each lower transformer block's learning rate by "
                                "this factor (1.0 = off; 0.8-0.95 is typical).")
    warmup_ratio: float = opt(0.1, "Fraction of the optimizer steps spent warming up the "
                              "learning rate linearly from 0.")
    grad_accum: int = opt(1, "Accumulate gradients over this many micro-batches per step.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 = off).")
    bf16: bool = opt(False, "Run forward and backward under bfloat16 autocast.")
    eval_every: int | None = opt(None, "Evaluate on the validation split every N optimizer "
                                 "steps (and always at each epoch end).")
    save_every: int | None = opt(None, "Write the resume state RUN/last/ every N optimizer steps "
                                 "(and always at each evaluation).")
    log_every: int = opt(10, "Write a training-loss line to metrics.jsonl every N steps.")
    unfreeze_every: int | None = opt(None, "layerwise: unfreeze one more block every N optimizer "
                                     "steps (default: one epoch's steps).")
    metric: str | None = opt(None, "Validation metric that picks the best checkpoint (default: "
                             "macro_f1 for text-classification; loss for text-generation, which "
                             "is fast; bleu decodes the validation prompts at every evaluation).",
                             choices=METRICS)
    patience: int | None = opt(None, "Stop after this many evaluations without improvement.")
    class_weights: str = opt("none", "Weight the loss by inverse class frequency (auto) or not.",
                             choices=("none", "auto"))
    group_by_length: bool = opt(False, "Put rows of similar length in the same batch "
                                "(less padding, faster).")
    resume: bool = opt(False, "Continue the run in --out from its RUN/last/ state.")
    lora_r: int = opt(8, "lora: rank of the adapters.")
    lora_alpha: float = opt(16.0, "lora: scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = opt(0.0, "lora: dropout on the adapters' input.")
    lora_target: str = opt("auto", "lora: the projections that get adapters: auto (every Linear "
                           "or Conv1D projection inside the transformer blocks) or a comma-"
                           "separated list of module names, e.g. q_proj,v_proj.")
    packing: bool = opt(False, "text-generation: pack several short rows into one sequence of up "
                        "to --max-length tokens (fewer, fuller batches; rows in a pack attend "
                        "to the rows before them).")
    max_new_tokens: int = opt(64, "text-generation with --metric bleu: most tokens generated per "
                              "validation prompt.")

    def __post_init__(self) -> None:
        super().__post_init__()
        metrics = TASK_METRICS[self.task]
        if self.metric is None:
            self.metric = metrics[0]
        _require(self.strategy in STRATEGIES, "strategy", f"choose one of {', '.join(STRATEGIES)}")
        _require(self.metric in metrics, "metric", f"{self.metric} does not apply to --task {self.task}; "
                 f"choose one of {', '.join(metrics)}")
        _require(self.class_weights in ("none", "auto"), "class_weights", "choose none or auto")
        _require(self.class_weights == "none" or self.task == CLASSIFICATION, "class_weights",
                 "applies to --task text-classification only; drop it")
        _require(not self.packing or self.task == GENERATION, "packing",
                 "applies to --task text-generation only; drop it")
        _require(self.lora_r > 0, "lora_r", "must be a positive rank")
        _require(self.lora_alpha > 0, "lora_alpha", "must be positive")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        _require(bool(self.lora_target.strip()), "lora_target", "give auto or module names")
        _require(self.max_new_tokens > 0, "max_new_tokens", "must be positive")
        _require(self.epochs > 0, "epochs", "must be positive")
        _require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(self.eval_batch_size > 0, "eval_batch_size", "must be positive")
        _require(self.lr > 0, "lr", "must be positive")
        _require(0 < self.layer_lr_decay <= 1, "layer_lr_decay", "must be in (0, 1]")
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _require(self.grad_accum > 0, "grad_accum", "must be positive")
        _require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 turns clipping off)")
        for name in ("eval_every", "save_every", "unfreeze_every", "patience"):
            value = getattr(self, name)
            _require(value is None or value > 0, name, "must be a positive number")
        _require(self.log_every > 0, "log_every", "must be positive")


@dataclass
class HeldOutConfig:
    """Which labelled rows a checkpoint is scored on (evaluation, export parity, verify)."""

    data: str | None = opt(None, "Data source (default: the checkpoint's own, split again with "
                           "its stored seed and ratios).")
    text_column: str | None = opt(None, "Text column (default: the checkpoint's).")
    label_column: str | None = opt(None, "Label column (default: the checkpoint's).")
    split: str = opt("test", "Rows to score: test (held-out), validation, or all rows of --data "
                     "(for a file that is a test set already).", choices=SPLITS)
    prompt_column: str | None = opt(None, "text-generation: prompt column (default: the checkpoint's).")
    completion_column: str | None = opt(None, "text-generation: completion column (default: the "
                                        "checkpoint's).")
    messages_column: str | None = opt(None, "text-generation: chat messages column (default: the "
                                      "checkpoint's).")

    def __post_init__(self) -> None:
        self._check_split()

    def _check_split(self) -> None:
        _require(self.split in SPLITS, "split", "choose test, validation or all")


@dataclass
class EvalConfig(HeldOutConfig):
    """Evaluation of a checkpoint on a split of a data set."""

    checkpoint: str = opt("", "Checkpoint folder written by 'deploykit train'.", positional=True)
    out: str = opt("eval", "Folder for metrics.json, report.md, errors.jsonl and plots.")
    batch_size: int = opt(128, "Rows per batch.")
    max_errors: int = opt(200, "Keep this many error cases in errors.jsonl.")
    slice_column: str | None = opt(None, "Also report every metric per value of this column "
                                   "(e.g. a source, domain or language column of --data).")
    max_new_tokens: int = opt(64, "text-generation: most tokens generated per prompt (greedy).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.checkpoint), "checkpoint", "give the checkpoint folder to evaluate")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(self.max_new_tokens > 0, "max_new_tokens", "must be positive")


# --- YAML in and out -------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a YAML or flag value to the field's declared type, or raise naming the key."""
    if value is None:
        return None
    hint = _field_types(cls)[name]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    options = [o for o in options if o is not type(None)]
    target = options[0]
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return target(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value {value!r} for '{name}': expected {target.__name__}") from None


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build a config of type ``cls`` from a flat mapping, refusing unknown keys.

    Args:
        cls: The config dataclass.
        values: Flat mapping of field name to value.
        source: Where the values came from, for error messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: On an unknown key or a value of the wrong type or range.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {source}; valid keys are: "
                          f"{', '.join(sorted(names))}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML config file.

    Raises:
        ConfigError: If the file is missing, not YAML, or not a flat mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict) or any(isinstance(v, (dict, list)) for v in values.values()):
        raise ConfigError(f"config file {path} must be a flat mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a flat, YAML-safe dict."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config as flat YAML (the same keys ``load_yaml`` reads)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- serving (deploykit serve / build / predict; the service reads the same fields from
# DEPLOYKIT_* environment variables, see deploykit/serve/settings.py) --------------------------

BATCHERS = ("deploykit", "bentoml")


@dataclass
class ServiceConfig:
    """Settings of the inference service; each field is also the env var DEPLOYKIT_<FIELD>."""

    variant: str | None = opt(None, "Model variant to serve (default: the manifest's default_variant).")
    max_batch_size: int = opt(64, "Most texts in one model call.")
    max_batch_tokens: int = opt(4096, "Token budget of one batcher step and model call (texts x padded "
                                "length): what one request waits for at most behind a big one.")
    max_latency_ms: float | None = opt(None, "deploykit batcher: longest wait for other requests "
                                       "to share a batch, only while under load (default 5). "
                                       "bentoml batcher: BentoML's max_latency_ms, past which "
                                       "requests get 503 (default BentoML's 60000).")
    threads: int | None = opt(None, "onnxruntime intra-op threads of each worker (default: all cores).")
    workers: int = opt(1, "Worker processes (BentoML's 'workers'), each with its own model, batcher and "
                       "queue; with several, set threads to cores / workers.")
    max_texts: int = opt(256, "Most texts in one request; more is a 400 error.")
    max_queue: int = opt(4096, "Most texts waiting in the batcher's queue; more is a 503 error "
                         "(counted in deploykit_rejected_total).")
    max_queue_wait_ms: float = opt(500.0, "Longest estimated queue wait a request is admitted with "
                                   "(from the measured cost per token and the tokens queued); more is "
                                   "an immediate 503 with Retry-After.")
    request_timeout_ms: float = opt(30000.0, "Deadline of every request; a request not computed by "
                                    "then is dropped and answered 504 (clients may ask for less with "
                                    "X-Request-Timeout or the v2 'timeout' parameter).")
    max_request_tokens: int = opt(32768, "Most tokens (after truncation) in one request; more is a "
                                  "413 error.")
    max_body_bytes: int = opt(4 * 1024 * 1024, "Largest request body in bytes; larger is a 413 error.")
    body_timeout_ms: float = opt(10000.0, "Time to receive a request body once its headers are in; "
                                 "slower is a 408 error and the connection is closed.")
    max_inflight_body_bytes: int = opt(64 * 1024 * 1024, "Most bytes of request bodies held at once "
                                       "(being read or served); more is a 503 error.")
    shutdown_timeout_ms: float = opt(10000.0, "On SIGTERM: time queued requests get to finish before "
                                     "they are answered 503 (the process exits soon after).")
    access_log: bool = opt(False, "BentoML's access log (one line per request).")
    request_metrics: bool = opt(False, "BentoML's per-request metrics (one series per URL path) on "
                                "/metrics beside deploykit's.")
    tracing: bool = opt(False, "BentoML's OpenTelemetry tracing of requests (bypassed when off).")
    providers: str = opt("CPUExecutionProvider", "onnxruntime execution providers, comma-separated "
                         "in order of preference (e.g. CUDAExecutionProvider,CPUExecutionProvider).")
    batcher: str = opt("deploykit", "Who batches /classify: deploykit's own dynamic batcher "
                       "(shared with the v2 routes) or BentoML's adaptive batching.", choices=BATCHERS)
    max_cache_tokens: int = opt(16384, "text-generation: bound on the batch's key/value cache, in "
                                "tokens (sequences x the longest prompt + max_new_tokens); a "
                                "sequence waits for room, one that can never fit is a 400 error.")
    max_new_tokens: int = opt(1024, "text-generation: the largest max_new_tokens a request may ask "
                              "for; more is a 400 error.")
    spin: str = opt("auto", "Whether onnxruntime's idle pool threads busy-wait between operators: "
                    "auto (on for text generation, whose decoding steps run back to back; off for "
                    "classification, where spinning threads starved the event loop), on, off.",
                    choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_texts", "max_queue", "max_body_bytes", "workers",
                     "max_queue_wait_ms", "request_timeout_ms", "max_request_tokens", "body_timeout_ms",
                     "max_inflight_body_bytes", "shutdown_timeout_ms", "max_cache_tokens", "max_new_tokens"):
            value = getattr(self, name)
            _require(value > 0 and value != float("inf"), name, "must be a positive number")
        _require(self.max_inflight_body_bytes >= self.max_body_bytes, "max_inflight_body_bytes",
                 "must be at least max_body_bytes (one largest body must fit)")
        _require(self.threads is None or self.threads > 0, "threads", "must be positive")
        _require(self.max_latency_ms is None or self.max_latency_ms >= 0, "max_latency_ms", "must be >= 0")
        _require(self.batcher in BATCHERS, "batcher", f"choose one of {', '.join(BATCHERS)}")
        _require(self.spin in ("auto", "on", "off"), "spin", "choose auto, on or off")
        _require(bool(self.provider_list()), "providers", "name at least one execution provider")

    def spins(self, task_default: bool) -> bool:
        """Whether the server's onnxruntime session spins (``spin``; ``auto`` is the task's default)."""
        return task_default if self.spin == "auto" else self.spin == "on"

    def provider_list(self) -> list[str]:
        """``providers`` as a list."""
        return [p.strip() for p in self.providers.split(",") if p.strip()]


@dataclass
class ServeConfig(ServiceConfig):
    """``deploykit serve``: run the BentoML service on an artifact."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    host: str = opt("127.0.0.1", "Address to bind (0.0.0.0 exposes the service to the network).")
    port: int = opt(3000, "Port to listen on.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.artifact), "artifact", "give the artifact folder to serve")
        _require(0 < self.port < 65536, "port", f"{self.port} is not a TCP port")


@dataclass
class BuildConfig:
    """``deploykit build``: pack the service, an artifact and deploykit itself into a bento."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    variants: str | None = opt(None, "Comma-separated variants to pack (default: only the "
                               "manifest's default variant).")
    tag: str | None = opt(None, "Bento tag name[:version] (default: deploykit-<model name>).")
    bentoml_home: str | None = opt(None, "BentoML store folder (default: $BENTOML_HOME or ~/bentoml).")
    context: str | None = opt(None, "Only write the build context (bentofile.yaml, deploykit's source, "
                              "the packed artifact/) into this folder; 'bentoml build' there builds "
                              "the same bento. At a checkout's root ('.') it writes ./artifact only.")

    def __post_init__(self) -> None:
        _require(bool(self.artifact), "artifact", "give the artifact folder to pack")


@dataclass
class PredictConfig:
    """``deploykit predict``: torch-free batch scoring of a file with an artifact."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    data: str = opt("", "CSV, JSON (a list of objects), JSONL or Parquet file to score.")
    text_column: str = opt("text", "Column that holds the text (for a text-generation artifact: "
                           "the prompt).")
    out: str = opt("predictions.jsonl", "JSONL file to write: one line per input row, in order.")
    variant: str | None = opt(None, "Model variant (default: the manifest's default_variant).")
    threads: int | None = opt(None, "onnxruntime intra-op threads (default: all cores).")
    max_batch_tokens: int = opt(16384, "Token budget of one model call.")
    max_batch_size: int = opt(64, "Most texts in one model call.")
    chunk_size: int = opt(1024, "Rows read, scored and written per step (bounds memory).")
    max_new_tokens: int | None = opt(None, "text-generation: most tokens generated per prompt "
                                     "(default: the manifest's generation default).")
    temperature: float = opt(0.0, "text-generation: sampling temperature (0 = greedy).")
    seed: int = opt(0, "text-generation: seed of sampling (row i samples with seed + i).")

    def __post_init__(self) -> None:
        _require(bool(self.artifact), "artifact", "give the artifact folder to score with")
        _require(bool(self.data), "data", "give the file to score")
        for name in ("max_batch_tokens", "max_batch_size", "chunk_size"):
            _require(getattr(self, name) > 0, name, "must be positive")
        _require(self.threads is None or self.threads > 0, "threads", "must be positive")
        _require(self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens", "must be positive")
        _require(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")

# --- export and verify (the artifact stage) ---------------------------------------------------

OPTIMIZE_LEVELS = ("none", "O1", "O2")
QUANTIZE_MODES = ("auto", "static", "dynamic", "none")
# Static INT8 schemes (deploykit.export.int8_schemes, which checks this list against its own).
INT8_SCHEMES = ("auto", "static-minmax", "static-entropy", "static-minmax-fallback", "static-entropy-fallback")
VARIANT_NAMES = ("fp32", "opt", "int8")


@dataclass
class ParityConfig(HeldOutConfig):
    """Held-out data and the parity bounds every exported variant must meet (export and verify)."""

    max_eval_samples: int | None = opt(None, "Check parity on the first N rows of the split only "
                                       "(default: all of it; for quick runs and tests).")
    batch_sizes: str = opt("1,7,64", "Comma-separated batch sizes that the parity check cycles "
                           "through (batch 1 is unpadded; larger ones mix padded and full rows).")
    fp32_atol: float = opt(1e-4, "Largest absolute logit difference allowed for the fp32 and "
                           "fused (opt) variants.")
    fp32_min_agreement: float = opt(1.0, "Smallest top-1 label agreement with PyTorch allowed for "
                                    "the fp32 and fused variants.")
    int8_min_agreement: float = opt(0.99, "Smallest top-1 label agreement with PyTorch allowed "
                                    "for INT8 variants.")
    int8_max_f1_drop: float = opt(0.01, "Largest macro-F1 loss (0.01 = 1 point) allowed for INT8 "
                                  "variants against PyTorch.")
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

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.max_eval_samples is None or self.max_eval_samples > 0, "max_eval_samples",
                 "must be a positive number of rows")
        try:
            sizes = [int(s) for s in str(self.batch_sizes).split(",") if s.strip()]
        except ValueError:
            sizes = []
        _require(bool(sizes) and all(s > 0 for s in sizes), "batch_sizes",
                 f"{self.batch_sizes!r} is not a comma-separated list of positive integers, e.g. 1,7,64")
        _require(self.fp32_atol > 0, "fp32_atol", "must be positive")
        for name in ("fp32_min_agreement", "int8_min_agreement"):
            _require(0 <= getattr(self, name) <= 1, name, "must be a fraction in [0, 1]")
        _require(0 <= self.int8_max_f1_drop <= 1, "int8_max_f1_drop", "must be in [0, 1]")
        _require(self.generation_tokens > 0, "generation_tokens", "must be a positive number of tokens")
        _require(0 < self.int8_generation_tokens <= self.generation_tokens, "int8_generation_tokens",
                 f"must be in [1, --generation-tokens {self.generation_tokens}]")
        _require(0 <= self.int8_min_prompt_agreement <= 1, "int8_min_prompt_agreement",
                 "must be a fraction in [0, 1]")
        _require(0 <= self.int8_max_bleu_drop <= 100, "int8_max_bleu_drop", "must be in [0, 100] BLEU points")

    @property
    def batch_size_list(self) -> list[int]:
        return [int(s) for s in str(self.batch_sizes).split(",") if s.strip()]


@dataclass
class ExportConfig(ParityConfig):
    """Export of a checkpoint to a verified ONNX artifact folder."""

    checkpoint: str = opt("", "Checkpoint folder written by 'deploykit train'.", positional=True)
    out: str = opt("artifact", "Artifact folder to write (model*.onnx, tokenizer.json, manifest.json).")
    name: str = opt("classifier", "Model name in the manifest (the served model's name).")
    optimize: str = opt("O2", "Graph optimization of model.opt.onnx: O1 (onnxruntime basic "
                        "optimizations), O2 (plus transformer fusions: Attention, "
                        "SkipLayerNormalization, BiasGelu), none (no opt variant).",
                        choices=OPTIMIZE_LEVELS)
    quantize: str = opt("auto", "model.int8.onnx: auto (static INT8, the fastest scheme that meets the "
                        "target bounds on validation rows and is batch-independent; none if no "
                        "scheme does, and the fused fp32 graph is served), static (the same "
                        "choice, but the most accurate scheme is written even when none meets "
                        "them; parity judges it), dynamic (activation scales per call: servable, "
                        "never the default, since a text's answer moves with its batch mates), "
                        "none.", choices=QUANTIZE_MODES)
    int8_scheme: str = opt("auto", "Static INT8 scheme: auto (static-minmax, then static-entropy, then "
                           "the accuracy-aware fallback on the better of the two: the first that "
                           "meets the target bounds), or one scheme by name.", choices=INT8_SCHEMES)
    int8_target_f1_drop: float | None = opt(None, "Largest macro-F1 loss (0.005 = half a point) an INT8 "
                                            "scheme may show on validation rows to be chosen "
                                            "(default: half of --int8-max-f1-drop, the gate's bound).")
    int8_fallback: str = opt("auto", "auto: when the all-INT8 graphs miss the target bounds on "
                             "validation rows, keep the operators that quantize worst in float, "
                             "the fewest that meet them (measured, recorded in the manifest); "
                             "off: quantize every operator.", choices=("auto", "off"))
    int8_search_samples: int = opt(2000, "Validation rows the INT8 scheme choice and the fallback "
                                   "search score each candidate graph on.")
    int8_search_margin: float | None = opt(None, "How far above --int8-min-agreement the INT8 "
                                           "choice wants the expected agreement (a low-noise "
                                           "estimate) on validation rows, so that the held-out split "
                                           "passes too (default: two standard errors of the gate's "
                                           "count on the held-out rows, 0.0032 for 3,816 rows).")
    int8_float_ffn_layers: int = opt(0, "With --quantize dynamic: keep the feed-forward MatMuls of "
                                     "the first N transformer layers in float, instead of searching "
                                     "(0: let --int8-fallback decide).")
    calibration_samples: int = opt(512, "Training rows (the first N of the training split, never "
                                   "held-out ones) that calibrate static INT8.")
    int8_block_size: int = opt(32, "text-generation: weights per quantization block of the INT8 "
                               "weight-only MatMuls (MatMulNBits; a power of two, at least 16).")
    int8_compute: str = opt("int8", "text-generation: how the INT8 MatMuls compute: int8 (each "
                            "token's activations quantized on their own, per block: onnxruntime's "
                            "accuracy_level 4, the fast kernels) or float (weights dequantized, "
                            "float activations: slower on CPU).", choices=("int8", "float"))
    reduce_range: str = opt("auto", "7-bit weights for INT8: auto (on when the CPU lacks VNNI), "
                            "on, off.", choices=("auto", "on", "off"))
    default_variant: str | None = opt(None, "Variant to serve by default (default: int8, else "
                                      "opt, else fp32, the first that passes parity and is "
                                      "batch-independent).",
                                      choices=VARIANT_NAMES)
    opset: int = opt(17, "ONNX opset of the exported graph.")
    overwrite: bool = opt(False, "Replace an existing artifact folder at --out.")
    allow_parity_failure: bool = opt(False, "Exit 0 even when a variant fails its parity bounds "
                                     "(it is still marked not servable in the manifest).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.checkpoint), "checkpoint", "give the checkpoint folder to export")
        _require(bool(self.out), "out", "give the artifact folder to write")
        _require(name_problem(self.name) is None, "name", f"{name_problem(self.name)} (it names the served model)")
        _require(self.optimize in OPTIMIZE_LEVELS, "optimize", f"choose one of {', '.join(OPTIMIZE_LEVELS)}")
        _require(self.quantize in QUANTIZE_MODES, "quantize", f"choose one of {', '.join(QUANTIZE_MODES)}")
        _require(self.int8_scheme in INT8_SCHEMES, "int8_scheme", f"choose one of {', '.join(INT8_SCHEMES)}")
        _require(self.int8_scheme == "auto" or self.quantize in ("auto", "static"), "int8_scheme",
                 f"{self.int8_scheme} is a static scheme; it needs --quantize auto or static, not {self.quantize}")
        _require(not self.int8_float_ffn_layers or self.quantize == "dynamic", "int8_float_ffn_layers",
                 "applies to --quantize dynamic; static INT8 chooses its float operators with "
                 "--int8-scheme static-minmax-fallback (or auto)")
        _require(self.int8_target_f1_drop is None or 0 <= self.int8_target_f1_drop <= 1, "int8_target_f1_drop",
                 "must be in [0, 1]")
        _require(self.reduce_range in ("auto", "on", "off"), "reduce_range", "choose auto, on or off")
        _require(self.calibration_samples > 0, "calibration_samples", "must be positive")
        _require(self.int8_block_size >= 16 and self.int8_block_size & (self.int8_block_size - 1) == 0,
                 "int8_block_size", f"{self.int8_block_size} is not a power of two >= 16")
        _require(self.int8_compute in ("int8", "float"), "int8_compute", "choose int8 or float")
        _require(self.int8_float_ffn_layers >= 0, "int8_float_ffn_layers", "must be >= 0")
        _require(self.int8_fallback in ("auto", "off"), "int8_fallback", "choose auto or off")
        _require(self.int8_search_samples > 0, "int8_search_samples", "must be a positive number of rows")
        _require(self.int8_search_margin is None or 0 <= self.int8_search_margin < 1, "int8_search_margin",
                 "must be a fraction in [0, 1)")
        _require(self.default_variant is None or self.default_variant in VARIANT_NAMES,
                 "default_variant", f"choose one of {', '.join(VARIANT_NAMES)}")
        _require(11 <= self.opset <= 21, "opset", f"{self.opset} is not in [11, 21]")

    @property
    def int8_target_f1(self) -> float:
        """The macro-F1 loss an INT8 scheme may show on validation rows to be chosen."""
        return self.int8_max_f1_drop / 2 if self.int8_target_f1_drop is None else self.int8_target_f1_drop


@dataclass
class VerifyConfig(ParityConfig):
    """Re-check an existing artifact: every file's sha256, then parity of every variant."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    checkpoint: str = opt("", "The checkpoint the artifact was exported from (PyTorch reference).")
    split: str | None = opt(None, "Rows to score: test, validation or all rows of --data (default: "
                            "the rows export checked, recorded in the manifest; any of --data, "
                            "--split, --text-column, --label-column, --max-eval-samples picks other "
                            "rows, with the checkpoint's defaults for the rest).", choices=SPLITS)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.artifact), "artifact", "give the artifact folder to verify")
        _require(bool(self.checkpoint), "checkpoint", "give the checkpoint the artifact came from "
                 "(--checkpoint RUN/checkpoint)")

    def _check_split(self) -> None:
        _require(self.split is None or self.split in SPLITS, "split", "choose test, validation or all")

    def rows_asked(self) -> bool:
        """Whether the user chose rows other than the ones the manifest records."""
        return any(value is not None for value in (self.data, self.split, self.text_column, self.label_column,
                                                   self.prompt_column, self.completion_column,
                                                   self.messages_column, self.max_eval_samples))


TRITON_KINDS = ("cpu", "gpu")
TRITON_GRAPH_LEVELS = ("all", "extended", "basic", "disabled")


@dataclass
class TritonConfig:
    """Writing a Triton Inference Server model repository from an exported artifact."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    out: str = opt("triton_repo", "Model repository folder to write.")
    name: str | None = opt(None, "Model name in the repository (default: the manifest's name).")
    kind: str = opt("cpu", "Where the ONNX model runs: cpu ships the manifest's default variant, "
                    "gpu ships the fp32 'opt' variant (dynamic INT8 is a CPU format).",
                    choices=TRITON_KINDS)
    variant: str | None = opt(None, "Ship this variant of the artifact instead of the one "
                              "--kind picks (e.g. opt on CPU).")
    instances: int = opt(1, "Model instances per device (instance_group count).")
    max_batch_size: int = opt(64, "Largest batch Triton's dynamic batcher forms (max_batch_size).")
    max_queue_delay_us: int = opt(1000, "How long the dynamic batcher waits to fill a batch, "
                                  "in microseconds.")
    threads: int = opt(0, "ONNX Runtime intra-op threads per instance (0 = one per core; "
                       "set cores / instances when --instances > 1).")
    graph_level: str = opt("extended", "ONNX Runtime graph optimizations Triton applies at load "
                           "(the artifact is already fused offline).", choices=TRITON_GRAPH_LEVELS)
    overwrite: bool = opt(False, "Replace --out if it exists and is not empty.")

    def __post_init__(self) -> None:
        _require(bool(self.artifact), "artifact", "give the artifact folder to package")
        _require(self.kind in TRITON_KINDS, "kind", "choose cpu or gpu")
        _require(self.graph_level in TRITON_GRAPH_LEVELS, "graph_level",
                 f"choose one of {', '.join(TRITON_GRAPH_LEVELS)}")
        _require(self.instances > 0, "instances", "must be a positive number of instances")
        _require(self.max_batch_size > 0, "max_batch_size", "must be positive")
        _require(self.max_queue_delay_us >= 0, "max_queue_delay_us", "must be >= 0")
        _require(self.threads >= 0, "threads", "must be >= 0 (0 lets ONNX Runtime pick)")
        _require(self.name is None or name_problem(self.name) is None, "name", str(name_problem(self.name)))


# --- Deployment (deploykit/deploy) ------------------------------------------------------------

CONTAINER_BACKENDS = ("docker", "buildah", "podman")
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


@dataclass
class ContainerizeConfig:
    """Build a container image of a bento (serving) or of the training image."""

    source: str = opt("", "A bento tag (name:version) from the BentoML store, or an artifact "
                      "folder (built into a bento first). Not used with --train.", positional=True)
    tag: str | None = opt(None, "Image tag to build (default: the bento's name:version, or "
                          "deploykit-train:VERSION with --train).")
    backend: str | None = opt(None, "Container engine; default: the first healthy one of "
                              "docker, buildah, podman.", choices=CONTAINER_BACKENDS)
    base_image: str | None = opt(None, "Base image (default python:3.11-slim). Give a local "
                                 "image to build offline (see docs/deployment.md).")
    gpu: bool = opt(False, "GPU flavour: onnxruntime-gpu instead of onnxruntime, serving the "
                    "fp32 fused 'opt' variant on the CUDA provider.")
    train: bool = opt(False, "Build the training image (k8s/training/Dockerfile: deploykit "
                      "with the train extra) instead of the serving image.")
    dockerfile_only: str | None = opt(None, "Write the Dockerfile (and its build context) to "
                                      "this folder instead of building an image.")

    def __post_init__(self) -> None:
        _require(self.train or bool(self.source), "source",
                 "give a bento tag or an artifact folder to containerize (or --train)")
        _require(self.backend is None or self.backend in CONTAINER_BACKENDS, "backend",
                 f"choose one of {', '.join(CONTAINER_BACKENDS)}")
        _require(not (self.train and self.gpu), "gpu",
                 "--gpu applies to the serving image; the training image takes TORCH_INDEX_URL")


@dataclass
class KubeConfig:
    """Render a kustomize overlay (serving, or multi-node training) with your image and values."""

    image: str = opt("", "Image to deploy (registry/name:tag or name@sha256:...).")
    out: str = opt("k8s-rendered", "Folder to write the overlay to (replaced if it exists).")
    artifact: str | None = opt(None, "Artifact folder: model name, variant and batch settings "
                               "are read from its manifest.json.")
    replicas: int = opt(2, "Initial replicas and the autoscaler's minimum.")
    max_replicas: int | None = opt(None, "Autoscaler maximum (default: 5 x --replicas).")
    namespace: str | None = opt(None, "Namespace for every resource (default: kubectl's).")
    cpu: str | None = opt(None, "CPU request per pod, e.g. 1 or 500m (limit = 2 x request).")
    memory: str | None = opt(None, "Memory request per pod, e.g. 1Gi (limit = 2 x request).")
    gpu: bool = opt(False, "GPU overlay: one GPU per pod, CUDA provider, the 'opt' variant.")
    port: int = opt(3000, "Container port the service listens on.")
    train: bool = opt(False, "Render the multi-node training Job instead of the service.")
    nodes: int = opt(2, "--train: number of pods (torchrun --nnodes).")
    nproc_per_node: int = opt(1, "--train: processes per pod (torchrun --nproc_per_node; "
                              "GPUs per pod with --gpu).")
    train_args: str = opt("--data tweets --model minilm --out /runs/tweets",
                          "--train: arguments of 'deploykit train' (the run folder should be "
                          "under /runs, the shared volume).")
    manifests: str | None = opt(None, "The k8s/ folder to render from (default: the one in "
                                "this checkout).")
    validate: bool = opt(True, "Build the overlay with 'kubectl kustomize' and validate it "
                         "strictly with kubernetes-validate (skipped without kubectl).")

    def __post_init__(self) -> None:
        import re

        _require(bool(self.image), "image", "give the image to deploy, e.g. "
                 "registry.example.com/deploykit:0.1.0")
        _require(self.replicas >= 1, "replicas", "must be at least 1")
        _require(self.max_replicas is None or self.max_replicas >= self.replicas,
                 "max_replicas", f"must be >= --replicas ({self.replicas})")
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            _require(value is None or re.match(_QUANTITY, value) is not None, name,
                     f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
        _require(1 <= self.port <= 65535, "port", f"{self.port} is not a TCP port")
        _require(self.nodes >= 1, "nodes", "must be at least 1")
        _require(self.nproc_per_node >= 1, "nproc_per_node", "must be at least 1")
        _require(self.namespace is None or re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                                     self.namespace) is not None,
                 "namespace", f"{self.namespace!r} is not a valid namespace name")


# --- Demo (deploykit/demo.py) ---------------------------------------------------------------

@dataclass
class DemoConfig:
    """``deploykit demo``: the whole pipeline on the built-in tweets and the packaged MiniLM."""

    out: str = opt("demo", "Folder for everything the demo writes (run, evaluation, artifact, "
                   "Triton repository, Kubernetes overlay, summary.md/json, logs).")
    quick: bool = opt(False, "A few training steps on a small sample: shows the whole path in "
                      "about 3 minutes, with no quality bar (INT8 may miss its parity gate).")
    overwrite: bool = opt(False, "Replace what an earlier demo wrote to --out.")
    bentoml_home: str | None = opt(None, "BentoML store for the bento (default: $BENTOML_HOME "
                                   "or ~/bentoml).")
    port: int | None = opt(None, "Port for the demo's service on 127.0.0.1 (default: a free one).")

    def __post_init__(self) -> None:
        _require(bool(self.out), "out", "give the folder the demo writes to")
        _require(self.port is None or 0 < self.port < 65536, "port", f"{self.port} is not a TCP port")


# --- benchmarks (deploykit bench offline / online) ---------------------------------------------

BENCH_ENGINES = ("pytorch", "optimum", "optimum-quantized", "runtime")
BENCH_PROTOCOLS = ("classify", "v2", "generate")


def int_list(value: str) -> list[int]:
    """``"1,8,32"`` as ``[1, 8, 32]`` (empty items ignored); ValueError on anything else."""
    return [int(s) for s in str(value).split(",") if s.strip()]


def _require_int_list(value: str, option: str, *, allow_empty: bool = False) -> None:
    try:
        items = int_list(value)
    except ValueError:
        items = None
    _require(items is not None and (allow_empty or bool(items)) and all(i > 0 for i in items),
             option, f"{value!r} is not a comma-separated list of positive integers, e.g. 1,8,32")


@dataclass
class BenchOfflineConfig:
    """``deploykit bench offline``: engines side by side in-process, each in its own subprocess."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    data: str = opt("tweets", "Texts to time: a CSV/JSON/JSONL/Parquet file, a saved data set, or "
                    "'tweets' (their real length distribution; the test split when there is one).")
    text_column: str = opt("text", "Column that holds the text.")
    checkpoint: str | None = opt(None, "Checkpoint the artifact came from, for the PyTorch eager "
                                 "engine (default: the manifest's provenance checkpoint, if present).")
    out: str = opt("bench-offline", "Folder for results.json, results.md and the PNG plots.")
    engines: str = opt("pytorch,optimum,runtime", "Comma-separated engines: pytorch (transformers "
                       "eager on the checkpoint), optimum (ORTModelForSequenceClassification on "
                       "the default variant's ONNX file), optimum-quantized (Optimum's own best "
                       "INT8 of the checkpoint: the better of its dynamic and static avx512_vnni "
                       "configs, built in --out the first time), runtime (deploykit's, once per "
                       "variant).")
    optimum_quantized_rows: int = opt(1000, "Validation rows that choose between Optimum's dynamic "
                                      "and static INT8 (label agreement with PyTorch).")
    variants: str | None = opt(None, "Comma-separated variants for the runtime engine (default: "
                               "every servable variant).")
    batch_sizes: str = opt("1,8,32,128", "Batch sizes for the data set's texts.")
    synthetic_lengths: str = opt("128,256", "Token lengths of the synthetic long inputs (empty: none).")
    synthetic_batch_sizes: str = opt("1,8,32", "Batch sizes for the synthetic long inputs (batch 128 "
                                     "of 256 tokens takes tens of seconds per call for PyTorch on 2 cores).")
    samples: int = opt(1024, "Texts drawn (seeded) from --data for the timed calls.")
    seed: int = opt(0, "Seed of the text sample.")
    warmup: int = opt(2, "Untimed calls before each timed cell.")
    min_iters: int = opt(5, "Timed calls per cell, at least.")
    min_duration: float = opt(2.0, "Timed seconds per cell, at least.")
    max_iters: int = opt(1000, "Timed calls per cell, at most (ends cells of tiny models).")
    threads: int | None = opt(None, "Threads of every engine (default: the CPUs this process may use).")
    generation_batch_sizes: str = opt("1,8,32", "text-generation: sequences generated together per call.")
    prompt_tokens: int = opt(128, "text-generation: tokens of every prompt.")
    new_tokens: int = opt(64, "text-generation: tokens generated per sequence (EOS ignored).")

    def __post_init__(self) -> None:
        _require(bool(self.artifact), "artifact", "give the artifact folder to benchmark")
        _require_int_list(self.generation_batch_sizes, "generation_batch_sizes")
        _require(self.prompt_tokens > 0 and self.new_tokens > 0, "prompt_tokens",
                 "--prompt-tokens and --new-tokens must be positive")
        engines = [e.strip() for e in self.engines.split(",") if e.strip()]
        _require(bool(engines) and all(e in BENCH_ENGINES for e in engines), "engines",
                 f"{self.engines!r}: choose from {', '.join(BENCH_ENGINES)}")
        _require_int_list(self.batch_sizes, "batch_sizes")
        _require_int_list(self.synthetic_lengths, "synthetic_lengths", allow_empty=True)
        _require_int_list(self.synthetic_batch_sizes, "synthetic_batch_sizes")
        _require(all(n >= 8 for n in int_list(self.synthetic_lengths)), "synthetic_lengths",
                 "every length must be at least 8 tokens")
        for name in ("samples", "min_iters", "max_iters", "optimum_quantized_rows"):
            _require(getattr(self, name) > 0, name, "must be positive")
        _require(self.warmup >= 0, "warmup", "must be >= 0")
        _require(self.min_duration >= 0, "min_duration", "must be >= 0 seconds")
        _require(self.max_iters >= self.min_iters, "max_iters", "must be >= --min-iters")
        _require(self.threads is None or self.threads > 0, "threads", "must be positive")

    @property
    def engine_list(self) -> list[str]:
        return [e.strip() for e in self.engines.split(",") if e.strip()]


@dataclass
class BenchOnlineConfig:
    """``deploykit bench online``: an asyncio load generator against a running service."""

    url: str = opt("http://127.0.0.1:3000", "Base URL of the service (deploykit serve or a Triton "
                   "server's HTTP endpoint).")
    protocol: str = opt("classify", "classify (POST /classify), v2 (POST /v2/models/MODEL/infer, the "
                        "KServe v2 / Triton protocol) or generate (streaming POST /generate of a "
                        "text-generation service: TTFT and tokens/s per client and in total).",
                        choices=BENCH_PROTOCOLS)
    new_tokens: int = opt(64, "--protocol generate: tokens generated per request (EOS ignored).")
    model: str = opt("classifier", "Model name for --protocol v2.")
    concurrency: str = opt("1,8,32,64", "Closed-loop levels: this many requests in flight, each "
                           "sent as soon as the previous one answered.")
    rate: float | None = opt(None, "Also run an open-loop level at this many requests per second "
                             "(latency counted from each request's scheduled start).")
    duration: float = opt(10.0, "Seconds per level.")
    warmup: float = opt(1.0, "Seconds of untimed load before each level.")
    single_requests: int = opt(50, "Sequential single requests timed after the heaviest level "
                               "(batching waits that stick after a burst show here).")
    texts_per_request: int = opt(1, "Texts in each request.")
    data: str = opt("tweets", "Texts to send: a CSV/JSON/JSONL/Parquet file, a saved data set, or 'tweets'.")
    text_column: str = opt("text", "Column that holds the text.")
    samples: int = opt(1024, "Texts drawn (seeded) from --data.")
    seed: int = opt(0, "Seed of the text sample.")
    timeout: float = opt(30.0, "Seconds before a request counts as a timeout error.")
    out: str = opt("bench-online", "Folder for results.json, results.md and the PNG plots.")
    allow_remote: bool = opt(False, "Allow a target that is not on this machine (loopback only by "
                             "default: a load test is a denial of service to someone else's server).")

    def __post_init__(self) -> None:
        _require_int_list(self.concurrency, "concurrency")
        _require(self.protocol in BENCH_PROTOCOLS, "protocol", "choose classify, v2 or generate")
        _require(self.new_tokens > 0, "new_tokens", "must be positive")
        _require(self.rate is None or self.rate > 0, "rate", "must be positive requests per second")
        _require(self.duration > 0, "duration", "must be positive seconds")
        _require(self.warmup >= 0, "warmup", "must be >= 0 seconds")
        _require(self.single_requests >= 0, "single_requests", "must be >= 0")
        for name in ("texts_per_request", "samples"):
            _require(getattr(self, name) > 0, name, "must be positive")
        _require(self.timeout > 0, "timeout", "must be positive seconds")
        _require(self.url.startswith(("http://", "https://")), "url",
                 f"{self.url!r} must start with http:// or https://")

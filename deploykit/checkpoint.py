"""The checkpoint folder contract: write it atomically, read and validate it.

A checkpoint is a ``save_pretrained`` folder (safetensors weights, ``config.json`` - with
``id2label`` for a classifier - and tokenizer files) plus ``deploykit.yaml`` (the full training
config, its ``task`` included, so later stages can rebuild the same splits) and
``metrics.json`` (the best validation metrics). A text-generation checkpoint is a plain
``AutoModelForCausalLM`` folder (LoRA adapters already merged into its weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from deploykit import tasks
from deploykit.config import CLASSIFICATION, GENERATION, TrainConfig, from_dict, save_yaml
from deploykit.errors import BadInputError
from deploykit.files import atomic_folder, recover_folder  # noqa: F401  (train and evaluation use them from here)

log = logging.getLogger(__name__)

CONFIG_FILE = "deploykit.yaml"
METRICS_FILE = "metrics.json"


def save(model: Any, tokenizer: Any, cfg: TrainConfig, metrics: dict[str, Any], final: str | Path) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        model: A transformers sequence-classification model (unwrapped, not DDP).
        tokenizer: Its tokenizer.
        cfg: The training config that produced it.
        metrics: The validation metrics to store in ``metrics.json``.
        final: The folder to write.

    Returns:
        The checkpoint folder.
    """
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_yaml(cfg, tmp / CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return Path(final)


def task(path: str | Path) -> str:
    """A checkpoint's task: the one its deploykit.yaml records, else what config.json's
    architecture is (a ``*ForCausalLM`` / ``*LMHeadModel`` is text-generation)."""
    path = Path(path)
    stored = path / CONFIG_FILE
    if stored.is_file():
        recorded = (yaml.safe_load(stored.read_text()) or {}).get("task")
        if recorded:
            return recorded
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return CLASSIFICATION
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return GENERATION if causal else CLASSIFICATION


def validate(path: str | Path, tasks: tuple[str, ...] = (CLASSIFICATION,)) -> Path:
    """Check that a folder is a usable checkpoint of one of ``tasks``, or say what is missing.

    Args:
        path: The checkpoint folder.
        tasks: The tasks the calling stage handles.

    Raises:
        BadInputError: Not a folder, no config/weights, another task, no labels, or no tokenizer.
    """
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"{path} is not a checkpoint folder; pass RUN/checkpoint written by "
                            f"'deploykit train'")
    config = path / "config.json"
    if not config.is_file():
        raise BadInputError(f"{path} has no config.json, so it is not a checkpoint; pass "
                            f"RUN/checkpoint written by 'deploykit train'")
    if not (path / "model.safetensors").is_file() and not list(path.glob("model-*.safetensors")):
        raise BadInputError(f"{path} has no safetensors weights (model.safetensors); deploykit "
                            f"never loads pickled weights - re-save the model with safe_serialization=True")
    found = task(path)
    if found not in tasks:
        known = found in tasks.names()
        raise BadInputError(f"{path} is a {found} checkpoint{'' if known else ' (an unknown task)'}; this "
                            f"command handles {' and '.join(tasks)} checkpoints")
    if found == GENERATION:
        return _validate_tokenizer(path)
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{config} is not valid JSON ({exc})") from None
    if not id2label or all(str(v).startswith("LABEL_") for v in id2label.values()):
        raise BadInputError(f"{config} has no label names (id2label); fine-tune the model with "
                            f"'deploykit train' or set id2label in config.json")
    return _validate_tokenizer(path)


def _validate_tokenizer(path: Path) -> Path:
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise BadInputError(f"{path} has no tokenizer files; save the tokenizer into the "
                            f"checkpoint (tokenizer.save_pretrained)")
    return path


def labels(path: str | Path) -> list[str]:
    """The label names of a checkpoint, in id order."""
    id2label = json.loads((Path(path) / "config.json").read_text())["id2label"]
    return [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))]


def train_config(path: str | Path) -> TrainConfig | None:
    """The training config stored in a checkpoint, or None if it has none."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    return from_dict(TrainConfig, yaml.safe_load(file.read_text()) or {}, source=str(file))


def load_model(path: str | Path, tasks: tuple[str, ...] = (CLASSIFICATION,), **kwargs: Any):
    """Load model and tokenizer from a checkpoint with transformers (safetensors only).

    Args:
        path: The checkpoint folder.
        tasks: The tasks the caller handles (see ``validate``).
        **kwargs: Passed to ``from_pretrained``.

    Returns:
        (model in eval mode: a sequence classifier or a causal language model, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = validate(path, tasks)
    model_class = AutoModelForCausalLM if task(path) == GENERATION else AutoModelForSequenceClassification
    model = model_class.from_pretrained(path, use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer

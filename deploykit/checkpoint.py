"""The checkpoint folder contract: write it atomically, read and validate it.

A checkpoint is a ``save_pretrained`` folder (safetensors weights, ``config.json`` and tokenizer
files) plus ``deploykit.yaml`` (the full training config, its ``task`` included, so later stages
can rebuild the same splits) and ``metrics.json`` (the best validation metrics). Its task
(``deploykit.tasks.of_checkpoint``) says which model class loads it and what else it must hold
(the task's ``train.model_class`` and ``train.check_checkpoint``: a classifier's ``id2label``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from deploykit import tasks
from deploykit.config import TrainConfig, from_dict, save_yaml
from deploykit.errors import BadInputError
from deploykit.files import atomic_folder, recover_folder  # noqa: F401  (train and evaluation use them from here)

log = logging.getLogger(__name__)

CONFIG_FILE = tasks.CHECKPOINT_CONFIG  # deploykit.yaml: the task registry reads the task from it too
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


def validate(path: str | Path) -> Path:
    """Check that a folder is a usable checkpoint of a task this deploykit knows, or say what is
    missing.

    Args:
        path: The checkpoint folder.

    Returns:
        The folder.

    Raises:
        BadInputError: Not a folder, no config/weights, an unknown task, what the task needs
            (a classifier's label names), or no tokenizer.
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
    found = tasks.checkpoint_task(path)
    if found not in tasks.names():
        raise BadInputError(f"{path} is a {found} checkpoint (an unknown task); this deploykit handles "
                            f"{' and '.join(tasks.names())} checkpoints")
    tasks.get(found).part("train").check_checkpoint(path)
    return _validate_tokenizer(path)


def _validate_tokenizer(path: Path) -> Path:
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise BadInputError(f"{path} has no tokenizer files; save the tokenizer into the "
                            f"checkpoint (tokenizer.save_pretrained)")
    return path


def train_config(path: str | Path) -> TrainConfig | None:
    """The training config stored in a checkpoint, or None if it has none."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    return from_dict(TrainConfig, yaml.safe_load(file.read_text()) or {}, source=str(file))


def load_model(path: str | Path, **kwargs: Any):
    """Load model and tokenizer from a checkpoint with transformers (safetensors only).

    Args:
        path: The checkpoint folder.
        **kwargs: Passed to ``from_pretrained``.

    Returns:
        (model in eval mode, as its task's model class, tokenizer).
    """
    from transformers import AutoTokenizer

    path = validate(path)
    model_class = tasks.of_checkpoint(path).part("train").model_class()
    model = model_class.from_pretrained(path, use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer

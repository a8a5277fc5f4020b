"""The checkpoint folder contract: write it atomically, read and validate it.

A checkpoint is a ``save_pretrained`` folder (safetensors weights, ``config.json`` with
``id2label``, tokenizer files) plus ``deploykit.yaml`` (the full training config, so later
stages can rebuild the same splits) and ``metrics.json`` (the best validation metrics).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from deploykit.config import TrainConfig, from_dict, save_yaml
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


def validate(path: str | Path) -> Path:
    """Check that a folder is a usable checkpoint, or say what is missing.

    Raises:
        BadInputError: Not a folder, no config/weights, no labels, or no tokenizer.
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
    try:
        id2label = json.loads(config.read_text()).get("id2label") or {}
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{config} is not valid JSON ({exc})") from None
    if not id2label or all(str(v).startswith("LABEL_") for v in id2label.values()):
        raise BadInputError(f"{config} has no label names (id2label); fine-tune the model with "
                            f"'deploykit train' or set id2label in config.json")
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


def load_model(path: str | Path, **kwargs: Any):
    """Load model and tokenizer from a checkpoint with transformers (safetensors only).

    Returns:
        (model in eval mode, tokenizer).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = validate(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer

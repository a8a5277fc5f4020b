"""The one registry of tasks: task name -> ``Task``, a descriptor that imports nothing heavy.

A task is what a model learns and serves (``text-classification``, ``text-generation``, ...),
recorded as ``task`` in the checkpoint's ``deploykit.yaml`` and in the artifact's manifest. Each
task is one folder, ``deploykit/tasks/<task>/``, whose files have the same names and public
names in every folder (docs/architecture.md, "Adding a task"):

    head.py      Head: the manifest's task fields (torch-free, standard library only)
    options.py   OPTIONS: the options the task adds to each stage's config; check(cfg, stage): its rules
    data.py      the task's rows: splits of a source, held-out rows
    train.py     Training: what the one training loop calls (model class, examples, loss, metrics)
    evaluate.py  Evaluation: held-out metrics, per-length and per-slice reports, worst cases
    export.py    Export: the graphs, the PyTorch reference, the parity check and its table
    runtime.py   the torch-free runtime of an artifact
    serve.py     load -> Backend (routes, drain, close), bento_apis, preflight, deployment_values
    predict.py   Scorer: a file's rows in, one result per row out (torch-free)
    bench.py     the offline benchmark's engines and report, the online load generators
    triton.py    (optional) the task's models of a Triton repository
    example.py   a tiny random model and data: what the contract test runs through every stage

Every stage asks this registry once for the task of its config, checkpoint or artifact and
calls that task's hooks (``Task.part``); outside ``deploykit/tasks/`` no code compares task
names. The registry imports a task's files only when a stage asks for them, so the serving
side stays torch-free and importing this module costs nothing.

More tasks register from outside the package: ``DEPLOYKIT_TASKS=module[,module...]`` names
modules that call ``register`` when imported (they are imported on the registry's first use).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from deploykit.errors import BadInputError

PLUGINS_ENV = "DEPLOYKIT_TASKS"
CHECKPOINT_CONFIG = "deploykit.yaml"


@dataclass(frozen=True)
class Task:
    """One task: its name, the package of its folder, and what the configs list before any of
    its files is imported.

    Args:
        name: The ``task`` recorded in checkpoints and manifests (``--task``'s value).
        package: The importable package of the task's folder (``deploykit.tasks.classification``).
        summary: One line for ``--task``'s help.
        metrics: The validation metrics that can pick the best checkpoint; the first is the default.
        architectures: Suffixes of ``config.json`` architectures that mark a checkpoint of this task
            when it has no ``deploykit.yaml`` (``ForCausalLM``); empty for the default task.
        protocols: ``deploykit bench online --protocol`` values whose load generator the task owns.
    """

    name: str
    package: str
    summary: str
    metrics: tuple[str, ...]
    architectures: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()

    def part(self, stage: str) -> ModuleType:
        """The task's module for one stage (``head``, ``options``, ``train``, ``export``, ...).

        Raises:
            BadInputError: The task has no such file (it does not support that stage).
        """
        name = f"{self.package}.{stage}"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the file exists but imports something missing
                raise
            raise BadInputError(f"the {self.name} task has no {stage} stage ({name}); see "
                                "docs/architecture.md, 'Adding a task'") from None

    def has(self, stage: str) -> bool:
        """Whether the task's folder has a file for ``stage`` (without importing it)."""
        return importlib.util.find_spec(f"{self.package}.{stage}") is not None

    def head(self) -> type:
        """The manifest head class (``head.Head``) of this task."""
        return self.part("head").Head


# The built-in tasks, in the order configs list their options. text-classification is the
# default task of a checkpoint that records none and whose architecture says nothing else.
_REGISTRY: dict[str, Task] = {}
_plugins_loaded = False


def register(task: Task) -> Task:
    """Add a task to the registry (a plugin module calls this when imported).

    Raises:
        ValueError: Another task already has the name.
    """
    known = _REGISTRY.get(task.name)
    if known is not None and known != task:
        raise ValueError(f"task {task.name!r} is registered already (by {known.package})")
    _REGISTRY[task.name] = task
    return task


register(Task("text-classification", "deploykit.tasks.classification",
              "a label per text (encoders: BERT, RoBERTa, ...)",
              metrics=("macro_f1", "accuracy", "weighted_f1", "loss", "micro_f1", "spearman", "pearson", "ndcg_at_10"),
              protocols=("classify", "v2", "rerank")))
register(Task("text-generation", "deploykit.tasks.generation",
              "a completion per prompt (decoder-only language models: Llama, Qwen2, GPT-2, ...)",
              metrics=("loss", "bleu"), architectures=("ForCausalLM", "LMHeadModel"), protocols=("generate",)))
register(Task("token-classification", "deploykit.tasks.token_classification",
              "a label per word: entities with character offsets (encoders: BERT, RoBERTa, ...)",
              metrics=("entity_f1", "token_accuracy", "loss"), architectures=("ForTokenClassification",),
              protocols=("ner", "ner-v2")))
register(Task("question-answering", "deploykit.tasks.question_answering",
              "the answer's span in a context, or none (extractive reading comprehension, SQuAD; encoders)",
              metrics=("f1", "exact_match", "loss"), architectures=("ForQuestionAnswering",),
              protocols=("answer", "answer-v2")))
DEFAULT = "text-classification"


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise BadInputError(f"{PLUGINS_ENV} names the module {module!r}, which cannot be imported "
                                f"({exc}); fix {PLUGINS_ENV} or PYTHONPATH") from None


def all_tasks() -> list[Task]:
    """Every registered task, built-in ones first."""
    _load_plugins()
    return list(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(t.name for t in all_tasks())


def get(name: str) -> Task:
    """The task called ``name``.

    Raises:
        BadInputError: No task has that name.
    """
    _load_plugins()
    task = _REGISTRY.get(name)
    if task is None:
        raise BadInputError(f"unknown task {name!r}; this deploykit knows {', '.join(names())}")
    return task


def of_protocol(protocol: str) -> Task:
    """The task whose online load generator speaks ``protocol``.

    Raises:
        BadInputError: No task owns it.
    """
    for task in all_tasks():
        if protocol in task.protocols:
            return task
    raise BadInputError(f"unknown protocol {protocol!r}; choose one of "
                        f"{', '.join(p for t in all_tasks() for p in t.protocols)}")


def checkpoint_task(path: str | Path) -> str:
    """A checkpoint's task name: the one its ``deploykit.yaml`` records, else the first task whose
    ``architectures`` match ``config.json``'s, else the default task (unreadable files included:
    the stage's own checks name what is wrong with them)."""
    import yaml

    path = Path(path)
    stored = path / CHECKPOINT_CONFIG
    if stored.is_file():
        try:
            recorded = (yaml.safe_load(stored.read_text()) or {}).get("task")
        except (yaml.YAMLError, AttributeError):
            recorded = None
        if recorded:
            return str(recorded)
    try:
        architectures: list[Any] = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return DEFAULT
    for task in all_tasks():
        if any(str(a).endswith(task.architectures) for a in architectures if task.architectures):
            return task.name
    return DEFAULT


def of_checkpoint(path: str | Path) -> Task:
    """The task of a checkpoint folder (see ``checkpoint_task``).

    Raises:
        BadInputError: It records a task this deploykit does not know.
    """
    return get(checkpoint_task(path))

"""``deploykit bench offline``: engines side by side on the same inputs, one subprocess each.

Written once for every task: the artifact's task (its folder's ``bench.Offline``) says what the
inputs are (texts of a data set and synthetic long ones; prompts of exact token lengths), which
engines it adds, what a cell measures and how the results read; this module runs them. Every
engine (PyTorch eager, Optimum's ORTModel, deploykit's runtime per variant) lives in its own
long-lived subprocess (``deploykit.bench.engines``): its peak memory is its own, and no engine
inherits another's threads. Cells (input set x batch size) run one engine at a time, and the
engine order rotates from cell to cell, so that load drift on a shared machine hits all engines
alike. Only ratios measured within one run are meaningful.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from deploykit.progress import bar as progress_bar

from deploykit import extras, tasks
from deploykit.bench import report
from deploykit.config import BenchOfflineConfig, check_task, to_dict
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import Manifest
from deploykit.session import available_cpus

log = logging.getLogger(__name__)

BASELINE = "pytorch"


class EngineProcess:
    """A running ``deploykit.bench.engines`` subprocess and its JSON-line channel.

    Args:
        name: The engine's label in the results (e.g. ``runtime:int8``).
        spec: What the subprocess loads (see ``engines.serve``).

    Raises:
        DeployKitError: If the engine fails to load (its stderr tail is in the message).
    """

    def __init__(self, name: str, spec: dict[str, Any], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name.replace(':', '-')}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "deploykit.bench.engines", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1)
        self.ready: dict[str, Any] = {}

    def wait_ready(self) -> dict[str, Any]:
        """Wait until the engine has loaded; returns its load time and RSS after load."""
        self.ready = self._read()
        return self.ready

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._log.flush()
            tail = self.log_path.read_text()[-2000:]
            raise DeployKitError(f"benchmark engine {self.name} exited with {self.proc.returncode}:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise DeployKitError(f"benchmark engine {self.name}: {reply['error']}")
        return reply

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply."""
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ask the subprocess to exit; kill it (this pid only) if it does not."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Offline(Protocol):
    """What this stage calls on the task (``deploykit/tasks/<task>/bench.py``'s ``Offline``, built
    from the config and the verified manifest; its module's ``ENGINES`` and ``measure`` run in
    the engine subprocesses, ``deploykit.bench.engines``)."""

    kind: str                # the results' "kind"
    ratio: tuple[str, str]   # (a cell's throughput key, the key of its ratio to PyTorch's)
    max_length: int          # every engine truncates at this many tokens
    max_batch: int           # the largest batch of any cell

    def input_sets(self) -> dict[str, dict[str, Any]]:
        """Input sets by name: ``{"texts": [...], "batch_sizes": [...], ...facts}``."""

    def engine(self, engine: str, common: dict[str, Any], checkpoint: str | None, out: Path) -> dict[str, dict[str, Any]]:
        """Specs of an engine the task adds (``optimum-quantized``), by result label."""

    def spec(self) -> dict[str, Any]:
        """Extra fields of every engine's spec (a decoder's pad token)."""

    def message(self) -> dict[str, Any]:
        """Extra fields of every cell's request (a decoder's ``new_tokens``)."""

    def facts(self) -> dict[str, Any]:
        """Extra top-level keys of the results."""

    def write(self, out: Path, results: dict[str, Any]) -> None:
        """results.json, results.md and plots."""


def _checkpoint(cfg: BenchOfflineConfig, manifest: Manifest) -> str | None:
    if cfg.checkpoint:
        if not (Path(cfg.checkpoint) / "config.json").is_file():
            raise BadInputError(f"--checkpoint {cfg.checkpoint} is not a checkpoint folder (no "
                                "config.json); pass the folder written by 'deploykit train'")
        return cfg.checkpoint
    recorded = manifest.provenance.get("checkpoint")
    if recorded and (Path(recorded) / "config.json").is_file():
        return str(recorded)
    return None


def engine_specs(cfg: BenchOfflineConfig, manifest: Manifest, bench: Offline, out: Path) -> dict[str, dict[str, Any]]:
    """The engines to start, by result label, with what each subprocess loads.

    The task's own engines (``optimum-quantized``: Optimum's INT8 models of the checkpoint) are
    built here, in ``out``, before any engine starts.

    Raises:
        BadInputError: Unknown variant, or no checkpoint where only PyTorch or the task's own
            engines were asked for.
    """
    threads = cfg.threads or available_cpus()
    artifact = str(Path(cfg.artifact).resolve())
    checkpoint = _checkpoint(cfg, manifest)
    common = {"task": manifest.task, "artifact": artifact, "threads": threads, "max_length": bench.max_length,
              "checkpoint": checkpoint, "max_batch_size": bench.max_batch, **bench.spec()}
    specs: dict[str, dict[str, Any]] = {}
    if set(cfg.engine_list) - {"runtime"}:
        # Each engine imports in its own subprocess, where a missing module is only a traceback.
        extras.require("bench offline --engines " + cfg.engines, "train")
    for engine in cfg.engine_list:
        if engine == "pytorch":
            if checkpoint is None:
                log.warning("no checkpoint (give --checkpoint): skipping the PyTorch engine, so "
                            "no ratio to PyTorch eager is reported")
                continue
            specs["pytorch"] = {**common, "kind": "pytorch"}
        elif engine == "optimum":
            variant = manifest.pick()
            specs[f"optimum:{variant.name}"] = {**common, "kind": "optimum", "variant": variant.name,
                                                "file": variant.file}
        elif engine == "runtime":
            names = ([v.strip() for v in cfg.variants.split(",") if v.strip()] if cfg.variants else
                     [name for name, v in manifest.variants.items() if v.servable])
            for variant in names:
                manifest.pick(variant, option="--variants")  # refuses unknown / unservable, naming the fix
                specs[f"runtime:{variant}"] = {**common, "kind": "runtime", "variant": variant}
        else:
            specs.update(bench.engine(engine, common, checkpoint, out))
    if not specs:
        raise BadInputError("no engine to run: pass --checkpoint for pytorch, or add optimum/runtime "
                            "to --engines")
    return specs


def run(cfg: BenchOfflineConfig) -> Path:
    """Run the offline benchmark and write the task's results (results.json, results.md, plots) to
    ``cfg.out``.

    Args:
        cfg: The benchmark's settings.

    Returns:
        The output folder.

    Raises:
        BadInputError: Bad artifact, data, checkpoint, variant or an option of another task (exit 2).
        IntegrityError: An artifact file does not match its manifest (exit 4).
        DeployKitError: An engine subprocess failed.
    """
    # The machine note (load average) before this run's own work raises it.
    machine = report.machine()
    artifact = Path(cfg.artifact)
    manifest = Manifest.verify(artifact)
    task = tasks.get(manifest.task)
    check_task(cfg, task.name, f"{artifact} is a {task.name} artifact")
    bench: Offline = task.part("bench").Offline(cfg, manifest)
    sets = bench.input_sets()
    out = Path(cfg.out)
    specs = engine_specs(cfg, manifest, bench, out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)

    engines: dict[str, EngineProcess] = {}
    started = time.time()
    cells: list[dict[str, Any]] = []
    try:
        # Engines load concurrently (imports dominate); timings start once all are ready.
        for name, spec in specs.items():
            engines[name] = EngineProcess(name, spec, log_dir)
        for name in progress_bar(engines, desc="loading engines", unit="engine"):
            engines[name].wait_ready()
            for set_name, info in sets.items():
                engines[name].ask({"op": "texts", "name": set_name, "texts": info["texts"]})
        plan = [(s, b) for s, info in sets.items() for b in info["batch_sizes"]]
        names = list(engines)
        with progress_bar(total=len(plan) * len(names), desc="benchmark", unit="run") as bar:
            for index, (set_name, batch) in enumerate(plan):
                # Rotate the order so that no engine always runs first (or right after another).
                order = names[index % len(names):] + names[:index % len(names)]
                for name in order:
                    bar.set_postfix_str(f"{set_name} b={batch} {name}")
                    result = engines[name].ask({"op": "bench", "name": set_name, "batch": batch,
                                                "warmup": cfg.warmup, "min_iters": cfg.min_iters,
                                                "min_duration": cfg.min_duration, "max_iters": cfg.max_iters,
                                                **bench.message()})
                    cells.append({"input": set_name, "batch_size": batch, "engine": name, **result})
                    bar.update(1)
    finally:
        for engine in engines.values():
            engine.close()

    _add_ratios(cells, *bench.ratio)
    peak = {}
    for name, engine in engines.items():
        peak[name] = {"peak_rss_mb": max((c["peak_rss_mb"] for c in cells if c["engine"] == name),
                                         default=engine.ready["rss_after_load_mb"]),
                      "rss_after_load_mb": engine.ready["rss_after_load_mb"], "load_s": engine.ready["load_s"]}
    results = {"kind": bench.kind, "artifact": str(artifact.resolve()), "model": manifest.name,
               "config": to_dict(cfg), "max_length": bench.max_length,
               "baseline": BASELINE if BASELINE in engines else None, "engines": peak,
               "specs": {n: {k: v for k, v in s.items() if k != "artifact"} for n, s in specs.items()},
               "inputs": {n: {k: v for k, v in s.items() if k != "texts"} for n, s in sets.items()},
               "machine": machine, "started": started, "wall_s": time.time() - started, **bench.facts(),
               "cells": cells}
    bench.write(out, results)
    log.info("offline benchmark written to %s", out)
    return out


def _add_ratios(cells: list[dict[str, Any]], key: str, ratio: str) -> None:
    """Each cell's throughput (``key``) as a ratio (``ratio``) to PyTorch eager's in the same
    (input, batch) cell."""
    base = {(c["input"], c["batch_size"]): c[key] for c in cells if c["engine"] == BASELINE}
    for cell in cells:
        ref = base.get((cell["input"], cell["batch_size"]))
        cell[ratio] = cell[key] / ref if ref else None

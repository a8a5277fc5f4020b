"""Ray Data batch scoring: ``deploykit predict --engine ray`` and ``score`` for your own pipelines.

The pipeline is Ray's own: one read task per input file (``deploykit.predict.read_rows``, the local
engine's reader, so both engines read, number and refuse rows alike and every output row carries
its file and row number), then ``map_batches`` over ``BatchScorer`` in an actor pool
(``compute=ray.data.ActorPoolStrategy``; ``concurrency=`` is deprecated), then ``write_parquet``
and, last, the completion marker. Ray streams the blocks with backpressure, spreads the actors over
the nodes (``scheduling_strategy="SPREAD"``) and retries: a scorer actor that dies is restarted and
its batch runs again, and only finished batches reach the writer, so every row is written exactly
once.

Each actor verifies the artifact (``Manifest.verify``: exit 4 on a bad hash) and builds the task's
runtime once, through the same hook as the local engine (the task folder's ``predict.Scorer``), so
every registered task runs here with no code of its own. Ray's batches differ from one process's,
so a variant whose results move with their batch mates (``parity.batch_independence`` beyond the
project's 1e-4) is refused unless ``--allow-batch-dependent``, which the marker records.

Torch-free: Ray Data, pyarrow, onnxruntime and the task's runtime only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from deploykit import predict, tasks
from deploykit.config import PredictConfig, from_dict
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest
from deploykit.scale import RAY_VERSION, storage  # noqa: F401 (RAY_VERSION: the pin, re-exported)

log = logging.getLogger(__name__)

# Reading and writing are I/O: they reserve a quarter CPU each, so they run beside scorer actors that
# hold whole CPUs (with 2 CPUs and 2 actors x 1 CPU, whole-CPU readers would never be scheduled).
IO_CPUS = 0.25


def _check_batch_independence(manifest: Manifest, variant: str | None, allow: bool) -> str:
    """The variant that will score, refused when its results depend on their batch mates.

    Raises:
        BadInputError: A batch-dependent variant without ``allow``, or an unservable one.
    """
    chosen = manifest.pick(variant)
    if not chosen.batch_independent and not allow:
        raise BadInputError(
            f"variant {chosen.name!r} of {manifest.where.parent} is batch-dependent: a row's outputs move by up to "
            f"{chosen.batch_dependence:.3g} with its batch mates (export measured it; the bound is "
            f"{BATCH_INDEPENDENCE_ATOL:g}), and Ray forms other batches than one process does, so the same row "
            "could score differently; pick a batch-independent variant with --variant (e.g. opt or fp32), or pass "
            "--allow-batch-dependent (the marker records it)")
    return chosen.name


class BatchScorer:
    """The actor of the pool: verifies the artifact and builds the task's scorer once, then scores
    batches (``pyarrow.Table`` in, ``pyarrow.Table`` out).

    Args:
        cfg_values: A ``PredictConfig`` as a dict (rebuilt here, in the worker).
        text_column: The column holding the text.
        keep: Input columns copied to the output, in order, before the task's fields.
        key_column: A column of integer row keys for the task (a decoder's per-row seed), or None
            (keys are positions in the batch).

    Raises:
        IntegrityError: An artifact file does not match its manifest (exit 4).
        BadInputError: As the task's ``Scorer``.
    """

    def __init__(self, cfg_values: dict[str, Any], text_column: str, keep: Sequence[str],
                 key_column: str | None) -> None:
        cfg = from_dict(PredictConfig, cfg_values, source="the Ray driver")
        manifest = Manifest.verify(cfg.artifact)  # before anything loads, on every node
        self.scorer: predict.Scorer = tasks.get(manifest.task).part("predict").Scorer(cfg)
        self.text_column, self.keep, self.key_column = text_column, list(keep), key_column
        log.info("scorer ready: %s, variant %s", self.scorer.name, self.scorer.variant)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        columns = batch.to_pydict()
        # A row of several texts (a text pair, a question and its context) is a list in Arrow.
        texts = [tuple(t) if isinstance(t, (list, tuple)) else t for t in columns[self.text_column]]
        for i, text in enumerate(texts):
            parts = text if isinstance(text, tuple) else (text,)
            if not parts or not all(isinstance(part, str) and part.strip() for part in parts):
                where = ", ".join(f"{k}={columns[k][i]!r}" for k in self.keep) or f"position {i} of a batch"
                blank = all(isinstance(part, str) for part in parts) and bool(parts)
                raise BadInputError(f"the row with {where} has a {'blank' if blank else 'missing'} "
                                    f"{self.text_column!r}; remove or fill the row")
        keys = columns[self.key_column] if self.key_column else list(range(len(texts)))
        results = self.scorer(texts, [int(k) for k in keys])
        clash = sorted(set(self.keep) & set(results[0])) if results else []
        if clash:
            raise BadInputError(f"the kept column(s) {', '.join(clash)} are also fields of the output; rename them")
        return pa.Table.from_pylist([{**{k: columns[k][i] for k in self.keep}, **r} for i, r in enumerate(results)])


def score(dataset: Any, artifact: str, *, text_column: str = "text", keep: Sequence[str] | None = None,
          key_column: str | None = None, variant: str | None = None, workers: int = 2, threads_per_worker: int = 1,
          batch_rows: int | None = None, allow_batch_dependent: bool = False, **options: Any) -> Any:
    """Score a Ray Dataset with an artifact: an actor pool of ``workers`` scorers, each verifying the
    artifact and loading it once.

    Args:
        dataset: A ``ray.data.Dataset`` with a text column.
        artifact: The artifact folder (at the same path on every node: a shared mount or the image).
        text_column: The column holding the text (a decoder's prompt).
        keep: Columns copied to the output before the task's fields (default: every column but the
            text).
        key_column: Integer row keys handed to the task (a decoder samples row ``k`` with seed
            ``seed + k``); default: positions in the batch.
        variant: The variant (default: the manifest's ``default_variant``).
        workers: Scorer actors.
        threads_per_worker: onnxruntime threads (and CPUs reserved) per actor.
        batch_rows: Rows per batch (default: the task's ``predict.batch_rows``).
        allow_batch_dependent: Score with a batch-dependent variant anyway.
        **options: Further ``deploykit predict`` options of the task (``max_new_tokens``, ...).

    Returns:
        A lazy ``ray.data.Dataset``: the kept columns, then the task's fields (a classifier's
        ``label``, ``score``, ``scores``, ``truncated``); rows in no particular order.

    Raises:
        BadInputError: A bad artifact, an unservable or batch-dependent variant, a missing column.
        IntegrityError: An artifact file does not match its manifest (checked here, and again in
            every actor).
    """
    manifest = Manifest.verify(artifact)
    cfg = from_dict(PredictConfig, {**options, "artifact": str(artifact), "data": "-", "engine": "ray", "out": "-",
                                    "variant": variant, "workers": workers, "threads_per_worker": threads_per_worker,
                                    "allow_batch_dependent": allow_batch_dependent},
                    source="deploykit.scale.ray.score")
    task = tasks.get(manifest.task)
    predict.check_engine(cfg, manifest, task)
    _check_batch_independence(manifest, variant, allow_batch_dependent)
    if keep is None:
        names = dataset.columns()
        if text_column not in names:
            raise BadInputError(f"the dataset has no column {text_column!r} (columns: {', '.join(names)}); "
                                "pass text_column")
        keep = [c for c in names if c != text_column]
    return _score(dataset, cfg, text_column, list(keep), key_column,
                  batch_rows or task.part("predict").batch_rows(cfg, manifest))


def _score(dataset: Any, cfg: PredictConfig, text_column: str, keep: list[str], key_column: str | None,
           rows: int) -> Any:
    """``score``'s pipeline step, for a config already checked."""
    return dataset.map_batches(
        BatchScorer, batch_size=rows, batch_format="pyarrow", zero_copy_batch=True,
        fn_constructor_kwargs={"cfg_values": _values(cfg), "text_column": text_column, "keep": keep,
                               "key_column": key_column},
        compute=_actor_pool(cfg.workers), num_cpus=cfg.threads_per_worker, scheduling_strategy="SPREAD")


def _actor_pool(workers: int) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=workers)


def _values(cfg: PredictConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


# --- the command ------------------------------------------------------------------------------

def _read_files(batch: Any, fs: Any, cfg_values: dict[str, Any], task: str, size: int) -> Iterator[Any]:
    """A read task: each file of the batch (``name``, ``path``) as tables of ``size`` rows with
    ``source``, ``row``, the id and ``text`` (``deploykit.predict.file_chunks``)."""
    import pyarrow as pa

    cfg = from_dict(PredictConfig, cfg_values, source="the Ray driver")
    source = tasks.get(task).part("predict").text_source(cfg)
    for name, path in zip(batch.column("name").to_pylist(), batch.column("path").to_pylist()):
        for chunk in predict.file_chunks(fs, path, name, cfg, source, size):
            yield pa.table(chunk)


def is_remote(address: str | None) -> bool:
    """Whether ``--address`` names a cluster beyond this machine (decided from the text alone:
    nothing is resolved or contacted)."""
    if address in (None, "", "auto", "local"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return not (host in ("localhost", "::1", socket.gethostname()) or host.startswith("127."))


def _check_shared(cfg: PredictConfig, data: storage.Location, out: storage.Location) -> None:
    """Refuse a path on this machine with a remote cluster: its nodes cannot read this disk.

    Raises:
        BadInputError: Naming the path and what to pass instead.
    """
    if not is_remote(cfg.address):
        return
    for option, loc in (("--data", data), ("--out", out)):
        if loc.local:
            raise BadInputError(f"{option} {loc.uri} is a path on this machine, but --address {cfg.address} is a "
                                "remote Ray cluster whose nodes cannot read this machine's disk; put it on storage "
                                "every node sees and pass its URL (s3://bucket/prefix, gs://...), or, for a shared "
                                f"mount at the same path on every node, file://{loc.path}")


def _connect(cfg: PredictConfig) -> bool:
    """Join ``--address``'s cluster, or start a private single-node Ray (dashboard and usage stats
    off, object store capped). Returns whether this call started Ray (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A task registered from outside the package must be importable in the workers too.
    env = {k: os.environ[k] for k in (tasks.PLUGINS_ENV, "PYTHONPATH") if os.environ.get(k)}
    runtime_env = {"env_vars": env} if env else None
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=runtime_env, logging_level=logging.WARNING,
                 log_to_driver=log.isEnabledFor(logging.DEBUG))
    else:
        ray.init(num_cpus=cfg.workers * cfg.threads_per_worker + 1, object_store_memory=cfg.object_store_memory,
                 include_dashboard=False, runtime_env=runtime_env, logging_level=logging.WARNING,
                 log_to_driver=log.isEnabledFor(logging.DEBUG))
    return True


def _cause(exc: BaseException) -> DeployKitError | None:
    """The deploykit error a Ray failure wraps (raised in a task or an actor), if any."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, DeployKitError):
            return error
        stack += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return None


def run(cfg: PredictConfig) -> str:
    """``deploykit predict --engine ray``: score ``cfg.data`` on Ray and write Parquet parts and the
    completion marker to ``cfg.out``.

    Args:
        cfg: The predict configuration (``engine`` ``ray``).

    Returns:
        The output folder (or URL).

    Raises:
        BadInputError: As the local engine, a batch-dependent variant (without
            ``--allow-batch-dependent``), a local path with a remote ``--address``, or an output
            folder that holds files (without ``--overwrite``); whatever parts were written are
            deleted.
        IntegrityError: An artifact file does not match its manifest (in the driver or an actor).
    """
    import ray
    import ray.data

    started = time.monotonic()
    manifest = Manifest.verify(cfg.artifact)
    task = tasks.get(manifest.task)
    predict.check_engine(cfg, manifest, task)
    variant = _check_batch_independence(manifest, cfg.variant, cfg.allow_batch_dependent)
    options = storage.parse_options(cfg.storage_options)
    data = storage.locate(cfg.data, options, "--data")
    out = storage.locate(cfg.out, options, "--out")
    _check_shared(cfg, data, out)
    files = storage.input_files(data)
    storage.prepare_output(out, cfg.overwrite)
    owns_ray = False
    try:
        owns_ray = _connect(cfg)
        size = task.part("predict").batch_rows(cfg, manifest)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("Ray %s: %d node(s), %d scorer actor(s) x %d thread(s), %d file(s), batches of %d rows",
                 ray.__version__, len(nodes), cfg.workers, cfg.threads_per_worker, len(files), size)
        listing = ray.data.from_items([{"name": n, "path": p} for n, p in files], override_num_blocks=len(files))
        rows = listing.map_batches(_read_files, batch_size=1, batch_format="pyarrow", num_cpus=IO_CPUS,
                                   fn_kwargs={"fs": data.fs, "cfg_values": _values(cfg), "task": task.name,
                                              "size": size})
        scored = _score(rows, cfg, "text", predict.key_columns(cfg), predict.ROW, size)
        scored.write_parquet(out.path, filesystem=out.arrow(), ray_remote_args={"num_cpus": IO_CPUS})
        parts = storage.parts(out)
        record = predict.completion_record(cfg, manifest.name, variant, task.name, parts, "ray",
                                           ray=ray.__version__, nodes=len(nodes), workers=cfg.workers,
                                           threads_per_worker=cfg.threads_per_worker,
                                           seconds=round(time.monotonic() - started, 3))
        storage.write_marker(out, record)
    except BaseException as exc:
        storage.clear(out)
        cause = _cause(exc)
        if cause is not None and cause is not exc:
            raise cause from None
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    log.info("wrote %d rows in %d part(s) to %s (%s, variant %s) in %.1f s", record["rows"], len(parts), cfg.out,
             manifest.name, variant, record["seconds"])
    return cfg.out

"""onnxruntime sessions as deploykit runs them, and the CPUs a process may use: what every task's
torch-free runtime shares.

Imports only the standard library and onnxruntime (inside the functions), plus
``deploykit.errors`` and ``deploykit.manifest``: the torch-free serving side imports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from deploykit.errors import BadInputError
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` reports the host's cores, which oversubscribes a container limited by
    Kubernetes ``resources.limits.cpu`` (a CFS quota in ``/sys/fs/cgroup/cpu.max``).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _load_libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc() if os.name == "posix" else None


def malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: return freed heap memory of every arena to the system (a no-op
    without glibc). Hand-written (ctypes) because no maintained library exposes it."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def available_providers() -> list[str]:
    """onnxruntime's execution providers usable in this process."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def session(model_file: Path, manifest: Manifest | None, *, threads: int | None = None,
            providers: Sequence[str] | None = None, spin: bool = False) -> Any:
    """An onnxruntime session set up as deploykit serves: sequential, no spinning (unless a
    single caller asks), all graph optimizations, on the given providers (an unavailable one is
    an error, not a CPU fallback).

    Args:
        model_file: The ONNX graph.
        manifest: The artifact's manifest (warns when it was verified with another onnxruntime).
        threads: Intra-op threads (default: ``available_cpus()``).
        providers: Execution providers in order of preference (default: CPU).
        spin: Let idle pool threads busy-wait: only for one caller calling back to back
            (``deploykit predict``, ``bench offline``), never behind the service's batcher.

    Raises:
        BadInputError: A non-positive thread count or an unavailable provider.
    """
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise BadInputError(f"threads must be a positive number, got {threads} (DEPLOYKIT_THREADS)")
    exported_with = manifest.provenance.get("onnxruntime") if manifest else None
    if exported_with and exported_with != ort.__version__:
        # Fused contrib operators and quantized kernels can change between releases.
        log.warning("artifact %s was exported and verified with onnxruntime %s but is served with %s; "
                    "run 'deploykit verify' with this version or pin onnxruntime==%s",
                    model_file.parent, exported_with, ort.__version__, exported_with)
    providers = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise BadInputError(f"execution provider(s) {', '.join(missing)} are not available in "
                            f"this onnxruntime build (available: {', '.join(ort.get_available_providers())}); "
                            "change DEPLOYKIT_PROVIDERS / --providers, or install onnxruntime-gpu for CUDA")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    # One model call at a time per session; parallelism comes from intra-op threads.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting of idle pool threads unless a single caller asks (``spin``): when the
    # session is called from a worker thread (the service's batcher), spinning threads starve
    # the event loop and the tokenizer; on 2 cores, one request through the batcher took
    # 14.0 ms with spinning vs 7.5 ms without (benchmarks/serve_latency.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)

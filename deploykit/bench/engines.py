"""One benchmark engine per process: ``python -m deploykit.bench.engines SPEC_JSON``.

The offline benchmark starts one of these per engine so that each engine's peak memory is its
own (a process's peak RSS only grows) and no engine's threads or allocator state leak into
another's timings. The parent speaks JSON lines over stdin/stdout: ``texts`` loads an input
set, ``bench`` times one (input set, batch size) cell, ``exit`` ends the process. What an engine
is and how a cell is timed are the task's (``SPEC["task"]``'s ``bench.ENGINES`` and
``bench.measure``: a classifier's PyTorch, Optimum and runtime engines on texts; a decoder's
``generate`` on prompts of token ids).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from typing import Any

from deploykit import tasks

log = logging.getLogger("deploykit.bench.engines")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across fork and exec, so every engine
    process started by a parent that had loaded PyTorch (to build ``optimum-quantized``) reported
    the parent's 1,469 MiB. ``VmHWM`` starts anew with the address space ``exec`` creates.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: bytes on macOS, KiB elsewhere
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def serve(spec: dict[str, Any], requests, replies) -> None:
    """Load the engine ``spec`` names (its task's ``bench.ENGINES[kind]``), then answer JSON-line
    requests until ``exit``: ``texts`` stores an input set, ``bench`` times one cell (the task's
    ``bench.measure``)."""
    part = tasks.get(spec["task"]).part("bench")
    t0 = time.perf_counter()
    call = part.ENGINES[spec["kind"]](spec)
    ready = {"ready": True, "load_s": time.perf_counter() - t0, "rss_after_load_mb": peak_rss_mb()}
    replies.write(json.dumps(ready) + "\n")
    replies.flush()
    inputs: dict[str, list[Any]] = {}
    for line in requests:
        msg = json.loads(line)
        if msg["op"] == "exit":
            break
        if msg["op"] == "texts":
            inputs[msg["name"]] = msg["texts"]
            reply: dict[str, Any] = {"ok": True}
        elif msg["op"] == "bench":
            reply = {**part.measure(call, inputs[msg["name"]], msg), "peak_rss_mb": peak_rss_mb()}
        else:
            reply = {"error": f"unknown op {msg['op']!r}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    """Entry point of the engine subprocess; the protocol uses a private copy of stdout."""
    # Libraries may print to stdout; keep the protocol channel clean by pointing fd 1 at stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    serve(json.loads(sys.argv[1]), sys.stdin, replies)


if __name__ == "__main__":
    main()

"""How a service worker starts and stops inside BentoML: refuse to serve, or drain on SIGTERM.

- ``exit_server``: a worker that cannot load its artifact (a refused manifest, a tampered
  file) stops the whole server with the reason, instead of being respawned forever by BentoML's
  process manager (circus) with the port open and nothing answering.
- ``drain_on_sigterm``: uvicorn only stops accepting connections on SIGTERM and then waits,
  without bound, for every connection to finish, so one client holding a body open kept the
  server alive past the Deployment's grace period. The worker hooks uvicorn's own signal
  handler (the only place the signal is seen before uvicorn starts waiting) to stop admitting
  requests, answer body readers in progress, answer what is still queued after
  ``shutdown_timeout_ms``, and give uvicorn the same bound for whatever remains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Callable

log = logging.getLogger("deploykit.serve")


def in_bentoml_worker() -> bool:
    """Whether this process is a worker that BentoML's process manager started."""
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def exit_server(message: str, code: int) -> None:
    """Log why the service cannot start, stop BentoML's process manager (the parent) and exit.

    Args:
        message: The reason (one line, no traceback: it is the user's to fix).
        code: The exit code (``DeployKitError.exit_code``).
    """
    log.error("cannot serve: %s", message)
    # os._exit skips logging's shutdown: flush what the handlers hold, or the reason is lost.
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    if in_bentoml_worker():
        # Circus would start this worker again and again; stopping it ends `bentoml serve`.
        os.kill(os.getppid(), signal.SIGTERM)
    os._exit(code)


def _uvicorn_server() -> Any:
    """The uvicorn ``Server`` running this worker (its SIGTERM handler is a bound method of it),
    or None outside one."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return server if server is not None and hasattr(server, "should_exit") else None


def http_stack() -> str:
    """The event loop and HTTP parser this worker runs on, e.g. ``uvloop / httptools``
    (BentoML's worker leaves uvicorn's loop and http at "auto": uvloop and httptools when
    installed, else asyncio and h11)."""
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:  # not in a server (the class instantiated by hand)
        return "no server"
    server = _uvicorn_server()
    protocol = getattr(getattr(server, "config", None), "http_protocol_class", None)
    parser = {"HttpToolsProtocol": "httptools", "H11Protocol": "h11"}.get(getattr(protocol, "__name__", ""), "?")
    return f"{loop} / {parser}"


def drain_on_sigterm(begin: Callable[[], None], timeout_s: float) -> bool:
    """Run ``begin`` on the event loop as soon as SIGTERM arrives, then let uvicorn shut down.

    Call from the running event loop of a uvicorn server (the service's ``__init__`` runs there).

    Args:
        begin: Starts draining (must not block).
        timeout_s: uvicorn's bound on waiting for connections, set when it has none.

    Returns:
        Whether the hook was installed (False when uvicorn's handler is not the current one).
    """
    previous = signal.getsignal(signal.SIGTERM)
    server = _uvicorn_server()
    if server is None:
        return False
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: object) -> None:
        if getattr(server.config, "timeout_graceful_shutdown", None) is None:
            server.config.timeout_graceful_shutdown = timeout_s + 2
        loop.call_soon_threadsafe(begin)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return True

"""``deploykit serve``: check the artifact, then hand the process over to ``bentoml serve``.

The artifact is loaded here first, exactly as the service's worker will load it (its task's
runtime: sha256 of every file, the manifest cross-checked against ``config.json``, the variant
servable, the providers available, the graph's inputs and outputs), so that a
bad artifact fails with its exit code (2 or 4) and a clear message before anything listens.
(A worker that still cannot load stops the whole server: ``deploykit.serve.lifecycle``.) The
settings travel to the service as the ``DEPLOYKIT_*`` environment variables the container
uses, too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from deploykit import tasks
from deploykit.config import ServeConfig, check_task
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest, device_of
from deploykit.serve import auth, settings
from deploykit.session import available_providers

log = logging.getLogger(__name__)

SERVICE = "deploykit.serve.service:Service"


def command(cfg: ServeConfig) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that serve ``cfg``.

    Raises:
        BadInputError: Bad artifact (a manifest that contradicts its files or graph), variant
            or provider.
        IntegrityError: An artifact file does not match its manifest.
    """
    artifact = Path(cfg.artifact).resolve()
    manifest = Manifest.verify(artifact)
    check_task(cfg, manifest.task, f"{cfg.artifact} is a {manifest.task} artifact")
    variant = manifest.pick(cfg.variant, device_of(cfg.provider_list())).name
    # Keys and certificate refused here, with exit 2, before anything listens (the worker checks
    # again: the container starts bentoml serve directly).
    auth.guard(cfg)
    auth.check_tls(cfg.ssl_certfile, cfg.ssl_keyfile)
    missing = [p for p in cfg.provider_list() if p not in available_providers()]
    if missing:
        raise BadInputError(f"execution provider(s) {', '.join(missing)} are not available (available: "
                            f"{', '.join(available_providers())}); change --providers")
    env = {**os.environ, **settings.to_env(str(artifact), cfg)}
    env[settings.env_name("variant")] = variant  # the service serves exactly the variant checked here
    for name in ("api_keys_file", "ssl_certfile", "ssl_keyfile"):  # the worker's working folder differs
        if getattr(cfg, name):
            env[settings.env_name(name)] = str(Path(getattr(cfg, name)).resolve())
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # The checkout (or site-packages) that holds this deploykit, so bentoml imports the same one.
    working_dir = str(Path(__file__).resolve().parents[2])
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", cfg.host,
            "--port", str(cfg.port), "--working-dir", working_dir]
    return argv, env


def preflight(cfg: ServeConfig, variant: str) -> None:
    """Load the artifact as the worker will (its task's ``serve.preflight``), so that whatever the
    manifest claims about its graph is checked before ``bentoml serve`` starts.

    Raises:
        BadInputError: The graph contradicts the manifest (inputs, outputs, max_length).
    """
    tasks.get(Manifest.read(cfg.artifact).task).part("serve").preflight(cfg.artifact, variant, cfg)


def run(cfg: ServeConfig) -> None:
    """Serve until stopped: replaces this process with ``bentoml serve`` (same pid)."""
    argv, env = command(cfg)
    preflight(cfg, env[settings.env_name("variant")])
    log.info("serving %s (variant %s) on %s://%s:%s", Manifest.read(cfg.artifact).name,
             env[settings.env_name("variant")], "https" if cfg.ssl_certfile else "http", cfg.host, cfg.port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM to its whole process group
    (bentoml or tritonserver and their workers), SIGKILL if it is not gone within ``timeout``.

    Args:
        proc: The server process (leader of its own session).
        timeout: Seconds to wait after SIGTERM.
    """
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

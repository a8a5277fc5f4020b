"""A real two-node Ray cluster on this machine, started and stopped by the test that needs it.

Each node is one ``ray start --block`` in its own session, bound to its own loopback address
(127.0.0.2 the head, 127.0.0.3 the worker: tests send traffic to loopback only), with 2 logical
CPUs, a capped object store, no dashboard and no usage stats, under a private temporary folder.
Stopping it signals exactly the processes of those two sessions (found by their session id), so
another developer's Ray on the same machine is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
OBJECT_STORE = 150_000_000  # bytes per node: the tiny models' batches need a few MB


def environment(folder: Path) -> dict[str, str]:
    """The variables every process of a test's Ray shares: usage stats off, and token
    authentication (Ray's default for new clusters) with a token of the test's own in ``folder``
    rather than ~/.ray/auth_token, which Ray would otherwise create and every later Ray would use."""
    import secrets

    token = folder / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    temp: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def python(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in a new driver process joined to the cluster (``ray`` imported, ``init`` done)."""
        script = (f"import json, ray\nray.init(address={self.address!r}, logging_level='ERROR')\n{code}\n"
                  "ray.shutdown()\n")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, **self.env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    def alive_nodes(self) -> list[dict]:
        return json.loads(self.python("print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress']} "
                                      "for n in ray.nodes() if n['Alive']]))").strip().splitlines()[-1])

    def processes(self) -> list[int]:
        """Pids of every process of the cluster's sessions (the two ``ray start`` and their children)."""
        import psutil

        sessions = {p.pid for p in self.procs}
        found = []
        for proc in psutil.process_iter():
            try:
                # A zombie is dead already (its parent, killed too, left it to init to reap).
                if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    def actor_pids(self, name: str) -> list[int]:
        """Pids of the cluster's processes whose title names ``name`` (Ray titles an actor's process
        ``ray::CLASS``)."""
        import psutil

        pids = []
        for pid in self.processes():
            try:
                if name in " ".join(psutil.Process(pid).cmdline()):
                    pids.append(pid)
            except psutil.Error:
                continue
        return pids

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.5)
        for pid in self.processes():  # ray start --block leaves its daemons to a SIGKILL
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


def start(env: dict[str, str], cpus: int = 2, timeout: float = 120) -> Cluster:
    """Start the head on 127.0.0.2 and a worker node on 127.0.0.3; return once both are alive.

    Args:
        env: ``environment(...)``: what the nodes and every driver share.
    """
    ray = str(Path(sys.executable).parent / "ray")
    # Ray's socket paths live under the temporary folder and must stay short (108 bytes).
    temp = Path(tempfile.mkdtemp(prefix="dkray", dir="/tmp"))
    port = _free_port(HEAD)
    cluster = Cluster(f"{HEAD}:{port}", temp, env)
    common = ["--num-cpus", str(cpus), "--object-store-memory", str(OBJECT_STORE), "--disable-usage-stats",
              "--block"]
    env = {**os.environ, **cluster.env}
    try:
        for ip, extra in ((HEAD, ["--head", "--port", str(port), "--include-dashboard", "false",
                                  "--temp-dir", str(temp)]),
                          (WORKER, ["--address", cluster.address])):
            with open(temp / f"{ip}.log", "w") as log:  # the node keeps its own copy of the descriptor
                cluster.procs.append(subprocess.Popen(
                    [ray, "start", "--node-ip-address", ip, "--dashboard-agent-listen-port", str(_free_port(ip)),
                     *extra, *common], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            deadline = time.monotonic() + timeout
            while "--block" not in (temp / f"{ip}.log").read_text():  # printed once the node is up
                assert all(p.poll() is None for p in cluster.procs), (temp / f"{ip}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"ray start on {ip} did not come up in {timeout} s"
                time.sleep(0.5)
        deadline = time.monotonic() + timeout
        while len(cluster.alive_nodes()) < 2:
            assert time.monotonic() < deadline, "the worker node never joined"
            time.sleep(1)
    except BaseException:
        cluster.stop()
        raise
    return cluster

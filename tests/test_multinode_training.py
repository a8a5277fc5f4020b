"""Multi-node training with two separate torchrun agents, one per "node".

Each agent runs `torchrun --nnodes 2 --nproc-per-node 1` bound to its own loopback address
(127.0.0.2 and 127.0.0.3: `--local-addr`, which torchrun hands on as MASTER_ADDR, and gloo's
host through DEPLOYKIT_GLOO_HOST), with the c10d rendezvous hosted by the first. Tests may send
traffic to loopback addresses only, so these stand in for two machines.

- 2 nodes x 1 process trains exactly as 1 node x 2 processes with the same seed: the same best
  metrics, weights within 1e-6.
- Killing one node's training process fails the whole run clearly within a bound the test sets
  (--dist-timeout), with no silent hang; `--resume` on both nodes then finishes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.serve.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
NODES = ("127.0.0.2", "127.0.0.3")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]), **extra}


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "deploykit", "train", "--data", str(data), "--model", str(model), "--out", str(out),
            "--batch-size", "8", "--lr", "0.01", "--log-every", "1", "--seed", "3", *extra]


def start_agents(tmp_path: Path, args: list[str], run_id: str) -> list[subprocess.Popen]:
    """One torchrun agent per node address; the first hosts the c10d rendezvous."""
    port = free_port()
    agents = []
    for rank, ip in enumerate(NODES):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"{NODES[0]}:{port}", "--rdzv-id", run_id,
               "--rdzv-conf", f"is_host={int(rank == 0)},join_timeout=120", "--local-addr", ip, "--max-restarts", "0",
               *args]
        agents.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path, DEPLOYKIT_GLOO_HOST=ip),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True))
    return agents


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return logs


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_two_nodes_train_as_one_node_with_two_processes(tmp_path, pretrained_dir, learnable_csv):
    args = ("--max-steps", "6", "--eval-every", "2")
    one = subprocess.run([TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
                          *train_args(learnable_csv, pretrained_dir, tmp_path / "one", *args)],
                         cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
                         check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    agents = start_agents(tmp_path, train_args(learnable_csv, pretrained_dir, tmp_path / "two", *args), "same")
    logs = wait_all(agents, timeout=300)
    assert [a.returncode for a in agents] == [0, 0], "\n".join(e for _, e in logs)[-4000:]
    assert "15 per epoch" in logs[0][1]  # one process group of 2 ranks: 240 rows / (2 x 8)
    best_one = json.loads((tmp_path / "one" / "checkpoint" / "metrics.json").read_text())
    best_two = json.loads((tmp_path / "two" / "checkpoint" / "metrics.json").read_text())
    assert best_two == best_one
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    assert max(float(abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    # And the run did train: the weights moved away from the pretrained ones.
    from safetensors.numpy import load_file

    start = load_file(str(pretrained_dir / "model.safetensors"))
    assert max(float(abs(a[k] - start[k]).max()) for k in a if k in start) > 1e-3


def test_a_killed_node_fails_the_run_clearly_and_resume_finishes_it(tmp_path, pretrained_dir, learnable_csv):
    bound = 30  # --dist-timeout: the longest a collective may wait; the test allows a generous multiple
    out = tmp_path / "run"
    args = train_args(learnable_csv, pretrained_dir, out, "--max-steps", "300", "--eval-every", "100",
                      "--save-every", "5", "--dist-timeout", str(bound))
    agents = start_agents(tmp_path, args, "killed")
    import psutil

    killed = None
    deadline = time.monotonic() + 300
    try:
        while killed is None and time.monotonic() < deadline:
            assert all(a.poll() is None for a in agents), "an agent ended before the kill"
            lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
            if sum(json.loads(line)["type"] == "train" for line in lines) >= 12 and (out / "last").is_dir():
                workers = psutil.Process(agents[1].pid).children(recursive=True)
                assert workers, "node 1's agent has no training process"
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)  # node 1's trainer dies (an OOM kill, a lost machine)
            time.sleep(0.05)
        assert killed is not None, "the run never reached step 12"
        killed_at = time.monotonic()
        logs = wait_all(agents, timeout=3 * bound)
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    assert time.monotonic() - killed_at < 3 * bound
    assert all(a.returncode != 0 for a in agents), [a.returncode for a in agents]
    # Node 0's trainer says what happened and what to do; both agents report the failed run.
    assert "another process of the run stopped answering" in logs[0][1] and "--resume" in logs[0][1], logs[0][1][-3000:]
    assert all("ChildFailedError" in err for _, err in logs)
    state = json.loads((out / "last" / "state.json").read_text())
    assert 5 <= state["step"] < 300
    # --resume on both nodes finishes the run from the last saved step.
    agents = start_agents(tmp_path, [*args, "--resume"], "resumed")
    logs = wait_all(agents, timeout=300)
    assert [a.returncode for a in agents] == [0, 0], "\n".join(e for _, e in logs)[-4000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, 301))
    assert f"resumed {out} at step {state['step']}" in logs[0][1]
    assert (out / "checkpoint" / "model.safetensors").is_file()

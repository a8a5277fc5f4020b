"""The multi-node training Job agrees with torchrun and with `deploykit train`.

The rendered Job's own shell command and arguments are run twice on this machine, once per
simulated pod (JOB_COMPLETION_INDEX 0 and 1), with the rendezvous host pointed at 127.0.0.1:
the two torchrun agents must meet in the c10d rendezvous that pod 0 hosts and run
`deploykit train` as one process group of NNODES x NPROC_PER_NODE ranks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.cli import build_parser, build_config
from deploykit.config import TrainConfig
from deploykit.deploy import validate
from deploykit.serve.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("kubectl")  # tests/outside_tools.py: fail in CI, else skip


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("train") / "overlay"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--train", "--image",
                           "reg.example.com/deploykit-train:1", "--nodes", "2",
                           "--nproc-per-node", "1", "--out", str(out),
                           "--train-args=--max-steps 5 --batch-size 8 --out /runs/r1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = validate.kustomize_build(out)
    assert validate.validate_documents(docs) == []
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _job(training):
    return training[("Job", "deploykit-train")]


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_job_and_headless_service_agree(training):
    job, svc = _job(training), training[("Service", "deploykit-train")]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = _env(container)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env["NNODES"]) == 2
    assert env["NPROC_PER_NODE"] == "1"
    # Pod 0's DNS name is <job>-0.<subdomain>, and the subdomain is the headless Service.
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert env["RDZV_HOST"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    port = int(env["RDZV_PORT"])
    assert port == svc["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    id_source = next(e for e in container["env"] if e["name"] == "RDZV_ID")["valueFrom"]
    assert "controller-uid" in id_source["fieldRef"]["fieldPath"]  # unique per Job run
    assert container["image"] == "reg.example.com/deploykit-train:1"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claim = next(v for v in pod["volumes"] if v["name"] == "runs")["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in training
    assert training[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    # The run folder deploykit train writes is on the shared volume.
    args = container["args"]
    assert args[args.index("--out") + 1].startswith(mounts["runs"] + "/")


def test_torchrun_command_launches_deploykit_train(training):
    container = _job(training)["spec"]["template"]["spec"]["containers"][0]
    shell, flag, script, name = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    words = shlex.split(script.split("exec ", 1)[1])
    assert words[0] == "torchrun"
    opts = dict(zip(words[1:-4:2], words[2:-4:2]))
    assert opts == {"--nnodes": "$NNODES", "--nproc_per_node": "$NPROC_PER_NODE",
                    "--rdzv_backend": "c10d", "--rdzv_endpoint": "$RDZV_HOST:$RDZV_PORT",
                    "--rdzv_id": "$RDZV_ID", "--rdzv_conf": "is_host=$IS_HOST,read_timeout=300",
                    "--max_restarts": "0"}
    assert words[-4:] == ["-m", "deploykit", "train", "$@"]
    # The container's args are `deploykit train` arguments that parse into a valid config.
    args = build_parser().parse_args(["train", *container["args"]])
    cfg = build_config(TrainConfig, args)
    assert (cfg.max_steps, cfg.batch_size, cfg.out) == (5, 8, "/runs/r1")


def test_rendered_job_trains_across_two_pods(tmp_path, pretrained_dir, learnable_csv):
    """Two simulated pods run the rendered command unchanged: real torchrun, real training."""
    out = tmp_path / "run"
    overlay = tmp_path / "overlay"
    train_args = (f"--data {learnable_csv} --model {pretrained_dir} --out {out} --max-steps 4 "
                  "--batch-size 8 --lr 0.01 --eval-every 2 --log-every 1")
    proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--train", "--image", "t:1",
                           "--nodes", "2", "--nproc-per-node", "1", "--out", str(overlay),
                           f"--train-args={train_args}", "--no-validate"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = validate.kustomize_build(overlay)
    job = next(d for d in docs if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    # The kubelet's view of the pod's environment, with the rendezvous host on loopback.
    base_env = {**os.environ, **{k: v for k, v in _env(container).items() if v is not None},
                "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(free_port()), "RDZV_ID": "job-uid-1",
                "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    nodes = int(base_env["NNODES"])
    pods = [subprocess.Popen([*container["command"], *container["args"]],
                             env={**base_env, "JOB_COMPLETION_INDEX": str(i)}, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(nodes)]
    logs = []
    try:
        for pod in pods:
            logs.append(pod.communicate(timeout=240))
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.kill()
    assert [p.returncode for p in pods] == [0] * nodes, "\n".join(e for _, e in logs)[-4000:]
    # One process group of NNODES x NPROC_PER_NODE ranks: 240 training rows / (2 ranks x 8)
    # = 15 steps per epoch (one rank alone would take 30).
    assert "15 per epoch" in logs[0][1] + logs[1][1]
    # Only rank 0 writes: one best-checkpoint line, one log line per step, one checkpoint.
    assert sum(stdout.count("best checkpoint:") for stdout, _ in logs) == 1
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["type"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert (out / "checkpoint" / "model.safetensors").is_file()

"""`deploykit k8s --train --train-kind trainjob` (Kubeflow Trainer v2 TrainJob) and `--batch-job`
(KubeRay RayJob): rendered, built with kubectl kustomize, and validated strictly against the pinned
CRDs' OpenAPI schemas (k8s/crds/), which kubernetes-validate does not know; plus the --ray image's
build context."""

from __future__ import annotations

import gzip
import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from deploykit.cli import build_config, build_parser
from deploykit.config import PredictConfig, TrainConfig
from deploykit.deploy import crd, validate

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "k8s" / "crds"
pytestmark = pytest.mark.usefixtures("kubectl")  # tests/outside_tools.py: fail in CI, else skip


def render(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "overlay"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--image", "reg.example.com/dk:1", *args,
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "validated strictly" in proc.stderr
    docs = validate.kustomize_build(out)
    core, custom = crd.custom(docs)
    assert validate.validate_documents(core) == [] and crd.validate(custom, CRDS) == []
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_trainjob_maps_the_options_to_the_pinned_trainer_api(tmp_path):
    docs = render(tmp_path, "--train", "--train-kind", "trainjob", "--nodes", "3", "--nproc-per-node", "2",
                  "--cpu", "2", "--memory", "4Gi", "--train-args=--max-steps 5 --out /runs/r1")
    job = docs[("TrainJob", "deploykit-train")]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "torch-distributed"}
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == "reg.example.com/dk:1"
    # Trainer v2.2+: numProcPerNode is the TrainJob's integer (v2.1 took "auto" and lived in the policy).
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                           "limits": {"cpu": "4", "memory": "8Gi"}}
    # torchrun takes its rendezvous from the runtime's PET_* variables; the arguments are deploykit train's.
    assert trainer["command"][0] == "torchrun" and trainer["command"][-3:] == ["-m", "deploykit", "train"]
    cfg = build_config(TrainConfig, build_parser().parse_args(["train", *trainer["args"]]))
    assert (cfg.max_steps, cfg.out) == (5, "/runs/r1")
    # The run folder is on the shared volume of the overlay.
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert docs[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/runs"
    gpu = render(tmp_path / "gpu", "--train", "--train-kind", "trainjob", "--gpu", "--nproc-per-node", "4")
    assert gpu[("TrainJob", "deploykit-train")]["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 4}


def test_rayjob_runs_the_ray_engine_at_the_pinned_ray_version(tmp_path):
    import ray

    docs = render(tmp_path, "--batch-job", "--nodes", "4", "--cpu", "3", "--memory", "6Gi",
                  "--batch-args=--data s3://in/texts/ --out s3://out/preds/ --id-column doc_id")
    job = docs[("RayJob", "deploykit-batch")]
    cluster = job["spec"]["rayClusterSpec"]
    pin = next(r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
               if r.startswith("ray["))
    assert pin == f"ray[data]=={cluster['rayVersion']}" and cluster["rayVersion"] == ray.__version__
    images = [c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]]
    assert images == ["reg.example.com/dk:1"] * 2
    workers = cluster["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    assert workers["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "3", "memory": "6Gi"}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["deploykit", "predict"]
    cfg = build_config(PredictConfig, build_parser().parse_args(words[1:]))
    assert (cfg.artifact, cfg.engine, cfg.address) == ("/opt/deploykit/artifact", "ray", "auto")
    assert (cfg.workers, cfg.threads_per_worker) == (4, 3)  # one actor per worker pod, holding its CPUs
    assert (cfg.data, cfg.out, cfg.id_column) == ("s3://in/texts/", "s3://out/preds/", "doc_id")


def test_the_crd_validation_can_fail():
    import yaml

    job = yaml.safe_load((ROOT / "k8s" / "trainjob" / "trainjob.yaml").read_text())
    assert crd.validate([job], CRDS) == []
    job["spec"]["trainer"]["numProcPerNode"] = "auto"      # the v2.1 API
    job["spec"]["trainer"]["numProcsPerNode"] = 2          # a typo the API server would prune silently
    problems = crd.validate([job], CRDS)
    assert any("numProcPerNode" in p and "integer" in p for p in problems)
    assert any("numProcsPerNode" in p and "unexpected" in p for p in problems)
    ray_job = yaml.safe_load((ROOT / "k8s" / "batch" / "rayjob.yaml").read_text())
    assert crd.validate([ray_job], CRDS) == []
    ray_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    ray_job["apiVersion"] = "ray.io/v1"
    assert any("replicas" in p for p in crd.validate([ray_job], CRDS))
    ray_job["apiVersion"] = "ray.io/v1alpha1"
    assert "serves ray.io/v1" in crd.validate([ray_job], CRDS)[0]


def test_the_pinned_crds_are_the_release_files_the_readme_names():
    readme = (CRDS / "README.md").read_text()
    for path in CRDS.glob("*.yaml.gz"):
        digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        assert re.search(rf"{re.escape(path.name)}.*{digest}", readme), path.name


def test_bad_job_options_are_refused_with_exit_2(tmp_path):
    for args, message in ((["--train-kind", "trainjob"], "add --train"), (["--batch-job", "--train"], "drop --train"),
                          (["--batch-job", "--gpu"], "drop --gpu"),
                          (["--batch-job", "--autoscale", "keda"], "drop it with --batch-job")):
        proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--image", "x:1", *args, "--out",
                               str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_containerize_ray_writes_a_torch_free_context_with_the_verified_artifact(serve_artifact, tmp_path):
    out = tmp_path / "context"
    proc = subprocess.run([sys.executable, "-m", "deploykit", "containerize", str(serve_artifact), "--ray",
                           "--dockerfile-only", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    dockerfile = (out / "Dockerfile").read_text()
    assert 'pip install ".[ray]" "ray[default]==${RAY_VERSION}"' in dockerfile
    assert "COPY artifact /opt/deploykit/artifact" in dockerfile and "USER 1000:1000" in dockerfile
    assert (out / "deploykit" / "scale" / "ray.py").is_file() and (out / "pyproject.toml").is_file()
    assert sorted(p.name for p in (out / "artifact").iterdir()) == sorted(p.name for p in serve_artifact.iterdir())
    import shutil

    tampered = shutil.copytree(serve_artifact, tmp_path / "tampered")
    (tampered / "tokenizer.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "deploykit", "containerize", str(tampered),
                           "--ray", "--dockerfile-only", str(tmp_path / "c2")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 4 and "tokenizer.json" in proc.stderr and not (tmp_path / "c2").exists()

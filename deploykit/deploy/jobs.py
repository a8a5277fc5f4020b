"""The batch and training jobs ``deploykit k8s`` renders on operators' custom resources.

Beside the core-kinds Indexed Job (``--train``, ``k8s/training``): a Kubeflow Trainer v2
``TrainJob`` (``--train --train-kind trainjob``, ``k8s/trainjob``) and a KubeRay ``RayJob``
(``--batch-job``, ``k8s/batch``) that runs ``deploykit predict --engine ray``. The manifests are
kept by hand in ``k8s/``; this module only writes the JSON patches that set the image and the
values (kustomize's ``images:`` does not reach a custom resource's image fields), and validates
the built custom resources against their pinned CRDs (``deploy.crd``, ``k8s/crds``).
"""

from __future__ import annotations

import shlex
from typing import Any

from deploykit.config import KubeConfig
from deploykit.scale import RAY_VERSION

TRAINJOB = "deploykit-train"   # TrainJob name in k8s/trainjob
RAYJOB = "deploykit-batch"     # RayJob name in k8s/batch
ARTIFACT_IN_IMAGE = "/opt/deploykit/artifact"  # where `deploykit containerize --ray` puts the artifact


def applies(cfg: KubeConfig) -> bool:
    """Whether ``cfg`` renders one of these jobs (rather than the service or the Indexed Job)."""
    return cfg.batch_job or (cfg.train and cfg.train_kind == "trainjob")


def source(cfg: KubeConfig) -> str:
    """The ``k8s/`` folder the job's overlay builds on."""
    return "batch" if cfg.batch_job else "trainjob"


def _threads(cfg: KubeConfig) -> int:
    """Scorer threads per worker pod: its whole CPU request (at least one)."""
    try:
        return max(1, int(float(cfg.cpu))) if cfg.cpu and not cfg.cpu.endswith("m") else 1
    except ValueError:
        return 1


def entrypoint(cfg: KubeConfig) -> str:
    """The RayJob's command: one scorer actor per worker pod, holding the pod's CPUs, then the
    user's ``--batch-args`` (which may override either)."""
    words = ["deploykit", "predict", ARTIFACT_IN_IMAGE, "--engine", "ray", "--address", "auto",
             "--workers", str(cfg.nodes), "--threads-per-worker", str(_threads(cfg)), *shlex.split(cfg.batch_args)]
    return shlex.join(words)


def _trainjob_ops(cfg: KubeConfig, resources: dict[str, Any] | None) -> list[dict[str, Any]]:
    trainer = "/spec/trainer"
    ops = [{"op": "replace", "path": f"{trainer}/image", "value": cfg.image},
           {"op": "replace", "path": f"{trainer}/args", "value": shlex.split(cfg.train_args)},
           {"op": "replace", "path": f"{trainer}/numNodes", "value": cfg.nodes},
           # Trainer >= v2.2: an integer on the TrainJob (no longer the runtime's Torch policy).
           {"op": "replace", "path": f"{trainer}/numProcPerNode", "value": cfg.nproc_per_node}]
    if cfg.gpu:
        resources = {"requests": {}, **(resources or {})}
        resources["limits"] = {**resources.get("limits", {}), "nvidia.com/gpu": cfg.nproc_per_node}
    if resources:
        ops.append({"op": "replace", "path": f"{trainer}/resourcesPerNode", "value": resources})
    return ops


def _rayjob_ops(cfg: KubeConfig, resources: dict[str, Any] | None) -> list[dict[str, Any]]:
    spec = "/spec/rayClusterSpec"
    workers = f"{spec}/workerGroupSpecs/0"
    ops = [{"op": "replace", "path": "/spec/entrypoint", "value": entrypoint(cfg)},
           {"op": "replace", "path": f"{spec}/rayVersion", "value": RAY_VERSION},
           {"op": "replace", "path": f"{spec}/headGroupSpec/template/spec/containers/0/image", "value": cfg.image},
           {"op": "replace", "path": f"{workers}/template/spec/containers/0/image", "value": cfg.image}]
    ops += [{"op": "replace", "path": f"{workers}/{key}", "value": cfg.nodes}
            for key in ("replicas", "minReplicas", "maxReplicas")]
    if resources:
        ops.append({"op": "replace", "path": f"{workers}/template/spec/containers/0/resources", "value": resources})
    return ops


def patches(cfg: KubeConfig, resources: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The overlay's patch files for the job: ``{"path", "body", "target"}``.

    Args:
        cfg: The rendering options.
        resources: Requests and limits from --cpu/--memory (None: the manifests' own).
    """
    if cfg.batch_job:
        return [{"path": "patches/rayjob.yaml", "body": _rayjob_ops(cfg, resources),
                 "target": {"kind": "RayJob", "name": RAYJOB}}]
    return [{"path": "patches/trainjob.yaml", "body": _trainjob_ops(cfg, resources),
             "target": {"kind": "TrainJob", "name": TRAINJOB}}]

"""Render a ready kustomize overlay over ``k8s/``: the image and the values, nothing else.

The manifests themselves live in ``k8s/`` (base, overlays/cpu, overlays/gpu, training) and are
kept by hand, so they can be read and reviewed as plain Kubernetes YAML. This module copies the
pieces an overlay needs into ``--out`` (so the folder is self-contained and can be committed to
a GitOps repository) and writes one ``kustomization.yaml`` that sets the image, namespace,
replicas, resources and the ``DEPLOYKIT_*`` settings through kustomize's own fields and patches.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from deploykit import tasks
from deploykit.config import KubeConfig, ServiceConfig
from deploykit.deploy import jobs
from deploykit.errors import BadInputError, DeployKitError
from deploykit.files import atomic_folder
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

SERVER = "deploykit"          # Deployment/Service/HPA name in k8s/base
TRAINER = "deploykit-train"   # Job and headless Service name in k8s/training
SERVE_IMAGE = "deploykit"     # image placeholders replaced through kustomize's `images:`
TRAIN_IMAGE = "deploykit-train"
DEFAULT_MAX_BATCH_SIZE = 64


def manifests_dir(cfg_value: str | None = None) -> Path:
    """The ``k8s/`` folder to render from.

    Args:
        cfg_value: An explicit folder (``--manifests``), or None for the checkout's ``k8s/``.

    Returns:
        The folder, which holds ``base/``, ``overlays/`` and ``training/``.

    Raises:
        BadInputError: If the folder does not hold deploykit's manifests.
    """
    path = Path(cfg_value) if cfg_value else Path(__file__).resolve().parents[2] / "k8s"
    if not (path / "base" / "kustomization.yaml").is_file():
        raise BadInputError(f"{path} does not hold deploykit's Kubernetes manifests "
                            "(base/kustomization.yaml is missing); pass the repository's k8s/ "
                            "folder with --manifests")
    return path


def split_image(image: str) -> dict[str, str]:
    """Split ``registry/name:tag`` or ``name@sha256:...`` into kustomize's image fields."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"newName": name, "digest": digest}
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:  # a colon after the last slash is a tag, not a registry port
        return {"newName": name, "newTag": tag}
    return {"newName": image}


def serving_values(manifest: Manifest | None, gpu: bool) -> dict[str, str]:
    """The ``DEPLOYKIT_*`` settings an artifact implies.

    The variant is the one ``Manifest.pick`` serves on the CPU or the GPU (the manifest's
    default, or the fused fp32 one on a GPU: dynamic INT8 runs on CPU kernels only). The token
    budget is the service's default step (what one request waits for at most behind a big one,
    docs/serving.md), and at least one text of max_length tokens.

    Raises:
        BadInputError: If the artifact lacks a servable variant for the chosen flavour.
    """
    if manifest is None:
        return {}
    variant = manifest.pick(None, "cuda" if gpu else "cpu")
    values = {"DEPLOYKIT_VARIANT": variant.name, "DEPLOYKIT_MAX_BATCH_SIZE": str(DEFAULT_MAX_BATCH_SIZE),
              "DEPLOYKIT_MAX_BATCH_TOKENS": str(max(ServiceConfig().max_batch_tokens, manifest.max_length)),
              "name": manifest.name}
    # The task's own settings and memory request (its serve.deployment_values), e.g. a decoder's cache.
    values.update(tasks.get(manifest.task).part("serve").deployment_values(manifest, variant.name))
    return values


def _double(quantity: str) -> str:
    """Twice a Kubernetes quantity (the limit for a request), keeping its unit."""
    number, unit = re.match(r"^([0-9.]+)(.*)$", quantity).groups()
    value = float(number) * 2
    return f"{int(value) if value.is_integer() else value}{unit}"


def _resources(cfg: KubeConfig, memory: str | None = None) -> dict[str, Any]:
    """Requests (and limits at twice them) from --cpu/--memory; ``memory`` is the artifact's
    estimate, used when --memory is not given."""
    requests = {k: v for k, v in (("cpu", cfg.cpu), ("memory", cfg.memory or memory)) if v}
    if not requests:
        return {}
    return {"resources": {"requests": requests,
                          "limits": {k: _double(v) for k, v in requests.items()}}}


def _server_patches(cfg: KubeConfig, values: dict[str, str]) -> list[dict[str, Any]]:
    env = [{"name": k, "value": v} for k, v in values.items() if k.startswith("DEPLOYKIT_")]
    container: dict[str, Any] = {"name": "server", **_resources(cfg, values.get("memory"))}
    if env:
        container["env"] = env
    annotations = {"prometheus.io/port": str(cfg.port)}
    if "name" in values:
        annotations["deploykit.io/model"] = values["name"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": SERVER},
                  "spec": {"template": {"metadata": {"annotations": annotations},
                                        "spec": {"containers": [container]}}}}
    max_replicas = cfg.max_replicas or 5 * cfg.replicas
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": SERVER},
           "spec": {"minReplicas": cfg.replicas, "maxReplicas": max_replicas}}
    # Ports are merged by containerPort in strategic merge, so the port is replaced by a
    # JSON patch (the base declares exactly one container with one port).
    base = "/spec/template/spec/containers/0"
    port_ops = [{"op": "replace", "path": f"{base}/ports/0/containerPort", "value": cfg.port},
                {"op": "replace", "path": f"{base}/args",
                 "value": ["serve", "--host", "0.0.0.0", "--port", str(cfg.port)]}]
    return [{"path": "patches/deployment.yaml", "body": deployment},
            {"path": "patches/hpa.yaml", "body": hpa},
            {"path": "patches/port.yaml", "body": port_ops,
             "target": {"kind": "Deployment", "name": SERVER}}]


def _train_patches(cfg: KubeConfig) -> list[dict[str, Any]]:
    container: dict[str, Any] = {
        "name": "trainer",
        "args": shlex.split(cfg.train_args),
        "env": [{"name": "NNODES", "value": str(cfg.nodes)},
                {"name": "NPROC_PER_NODE", "value": str(cfg.nproc_per_node)}],
        **_resources(cfg)}
    pod: dict[str, Any] = {"containers": [container]}
    if cfg.gpu:
        container.setdefault("resources", {}).setdefault("limits", {})["nvidia.com/gpu"] = \
            cfg.nproc_per_node
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": TRAINER},
           "spec": {"completions": cfg.nodes, "parallelism": cfg.nodes,
                    "template": {"spec": pod}}}
    return [{"path": "patches/job.yaml", "body": job}]


def _image_names(folder: Path, placeholder: str) -> list[str]:
    """The image names the resources carry after ``folder``'s own ``images:`` renames."""
    names = [placeholder]
    own = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    names += [i["newName"] for i in own.get("images", []) if i.get("newName")]
    return list(dict.fromkeys(names))


def kustomization(cfg: KubeConfig, values: dict[str, str], root: Path, resource: str
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The overlay's kustomization.yaml and its patch files.

    Args:
        cfg: The rendering options.
        values: ``serving_values()`` of the artifact (may be empty).
        root: The overlay folder being written (holding the copied manifests).
        resource: The copied kustomization the overlay builds on, relative to ``root``.

    Returns:
        The kustomization as a dict, and the patches as ``{"path", "body"[, "target"]}``.
    """
    doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1",
                           "kind": "Kustomization", "resources": [resource]}
    if cfg.namespace:
        doc["namespace"] = cfg.namespace
    # The overlays name a placeholder registry; map it (and the bare name) to the user's image.
    placeholder = TRAIN_IMAGE if cfg.train else SERVE_IMAGE
    if not jobs.applies(cfg):  # a custom resource's image is set by its JSON patch
        doc["images"] = [{"name": n, **split_image(cfg.image)}
                         for n in _image_names(root / resource, placeholder)]
    if jobs.applies(cfg):
        patches = jobs.patches(cfg, _resources(cfg).get("resources"))
    elif cfg.train:
        patches = _train_patches(cfg)
    else:
        doc["replicas"] = [{"name": SERVER, "count": cfg.replicas}]
        patches = _server_patches(cfg, values)
    doc["patches"] = [{k: v for k, v in p.items() if k != "body"} for p in patches]
    return doc, patches


def render(cfg: KubeConfig) -> Path:
    """Write a ready overlay to ``cfg.out`` (temp folder, then rename).

    Args:
        cfg: The rendering options.

    Returns:
        The overlay folder; ``kubectl apply -k`` it.

    Raises:
        BadInputError: On a missing manifests folder or a bad artifact.
        DeployKitError: If the built overlay fails strict validation (a bug; nothing is written).
    """
    from deploykit.deploy import crd, validate

    src = manifests_dir(cfg.manifests)
    # Only the manifest is read: rendering does not need the model files.
    values = serving_values(Manifest.read(cfg.artifact) if cfg.artifact else None, cfg.gpu)
    if jobs.applies(cfg):
        copies = [resource := jobs.source(cfg)]
    elif cfg.train:
        copies, resource = ["training"], "training"
    else:
        flavour = "gpu" if cfg.gpu else "cpu"
        copies, resource = ["base", f"overlays/{flavour}"], f"overlays/{flavour}"
    out = Path(cfg.out)
    with atomic_folder(out) as tmp:
        for rel in copies:
            shutil.copytree(src / rel, tmp / rel)
        doc, patches = kustomization(cfg, values, tmp, resource)
        (tmp / "patches").mkdir()
        for patch in patches:
            (tmp / patch["path"]).write_text(yaml.safe_dump(patch["body"], sort_keys=False))
        (tmp / "kustomization.yaml").write_text(
            "# Rendered by `deploykit k8s`; apply with: kubectl apply -k .\n"
            + yaml.safe_dump(doc, sort_keys=False))
        if cfg.validate:
            if validate.kubectl() is None:
                log.warning("kubectl not found: the overlay was written but not built or "
                            "validated (install kubectl to check it)")
            else:
                core, custom = crd.custom(validate.kustomize_build(tmp))
                problems = validate.validate_documents(core) + crd.validate(custom, src / "crds")
                if problems:
                    raise DeployKitError("the rendered overlay failed strict validation:\n  "
                                         + "\n  ".join(problems))
                log.info("built with kubectl kustomize and validated strictly against "
                         "Kubernetes %s", ", ".join(validate.versions()))
    log.info("wrote %s (apply with: kubectl apply -k %s)", out, out)
    return out

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
from deploykit.deploy import autoscale, jobs, kserve
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


API_KEYS_DIR = "/etc/deploykit/api-keys"  # where --api-keys-secret is mounted (read-only)
TLS_DIR = "/etc/deploykit/tls"            # where --tls-secret is mounted (read-only)


def _deployment_patch(cfg: KubeConfig, values: dict[str, str]) -> dict[str, Any]:
    """The Deployment's strategic-merge patch: settings, resources, annotations, Secrets, probes."""
    env = [{"name": k, "value": v} for k, v in values.items() if k.startswith("DEPLOYKIT_")]
    container: dict[str, Any] = {"name": "server", **_resources(cfg, values.get("memory"))}
    pod: dict[str, Any] = {"containers": [container]}
    volumes, mounts = [], []
    if cfg.api_keys_secret:
        # A reference only: the keys stay in the Secret, read by the service from the mounted file.
        env.append({"name": "DEPLOYKIT_API_KEYS_FILE", "value": f"{API_KEYS_DIR}/api-keys"})
        volumes.append({"name": "api-keys", "secret": {"secretName": cfg.api_keys_secret, "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    annotations = {"prometheus.io/port": str(cfg.port)}
    if cfg.tls_secret:
        env += [{"name": "DEPLOYKIT_SSL_CERTFILE", "value": f"{TLS_DIR}/tls.crt"},
                {"name": "DEPLOYKIT_SSL_KEYFILE", "value": f"{TLS_DIR}/tls.key"}]
        volumes.append({"name": "tls", "secret": {"secretName": cfg.tls_secret, "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            container[probe] = {"httpGet": {"scheme": "HTTPS"}}
        annotations["prometheus.io/scheme"] = "https"
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
        pod["volumes"] = volumes
    if "name" in values:
        annotations["deploykit.io/model"] = values["name"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": SERVER},
            "spec": {"template": {"metadata": {"annotations": annotations}, "spec": pod}}}


def _server_patches(cfg: KubeConfig, values: dict[str, str]) -> list[dict[str, Any]]:
    max_replicas = cfg.max_replicas or 5 * cfg.replicas
    hpa: dict[str, Any] = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                           "metadata": {"name": SERVER}}
    if cfg.autoscaler == "keda":  # KEDA makes its own HPA: ours goes, never two on one Deployment
        hpa["$patch"] = "delete"
    else:
        hpa["spec"] = {"minReplicas": cfg.replicas, "maxReplicas": max_replicas}
        if cfg.autoscaler == "queue":  # a list without a merge key: the patch replaces it whole
            hpa["spec"]["metrics"] = [autoscale.queue_metric(cfg.queue_wait_target_ms)]
    # Ports are merged by containerPort in strategic merge, so the port is replaced by a
    # JSON patch (the base declares exactly one container with one port).
    base = "/spec/template/spec/containers/0"
    port_ops = [{"op": "replace", "path": f"{base}/ports/0/containerPort", "value": cfg.port},
                {"op": "replace", "path": f"{base}/args",
                 "value": ["serve", "--host", "0.0.0.0", "--port", str(cfg.port)]}]
    return [{"path": "patches/deployment.yaml", "body": _deployment_patch(cfg, values)},
            {"path": "patches/hpa.yaml", "body": hpa},
            {"path": "patches/port.yaml", "body": port_ops,
             "target": {"kind": "Deployment", "name": SERVER}}]


def queue_wait_query(cfg: KubeConfig) -> str:
    """The PromQL of the mean queue wait over the rendered app's pods (KEDA's trigger, KServe's
    external metric; tests/test_prometheus.py evaluates it against a real service)."""
    prefix = f"{SERVER}-predictor" if cfg.kind == "kserve" else SERVER
    return autoscale.mean_queue_wait(autoscale.selector(cfg.namespace, prefix))


def _extra_resources(cfg: KubeConfig) -> dict[str, dict[str, Any]]:
    """Resources the overlay adds beside the base's: the KEDA ScaledObject."""
    if cfg.autoscaler != "keda":
        return {}
    return {"scaledobject.yaml": autoscale.scaled_object(
        SERVER, SERVER, cfg.replicas, cfg.max_replicas or 5 * cfg.replicas, cfg.prometheus_url,
        queue_wait_query(cfg), cfg.queue_wait_target_ms, cpu=not cfg.gpu)}


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
        doc["resources"] += list(_extra_resources(cfg))
        patches = _server_patches(cfg, values)
    doc["patches"] = [{k: v for k, v in p.items() if k != "body"} for p in patches]
    return doc, patches


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge of the patches this module writes, for resources kustomize does not
    build (the InferenceService): maps merge, lists of named items (containers, env, volumes,
    volume mounts) merge by name or mount path, other lists and values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) for x in base + patch):
        key = next((k for k in ("name", "mountPath") if all(k in x for x in base + patch)), None)
        if key is not None:
            out = list(base)
            for item in patch:
                index = next((i for i, x in enumerate(out) if x[key] == item[key]), None)
                if index is None:
                    out.append(item)
                else:
                    out[index] = merge(out[index], item)
            return out
    return patch


def server_deployment(cfg: KubeConfig, values: dict[str, str], src: Path) -> dict[str, Any]:
    """The Deployment as the rendered overlay makes it (base, GPU overlay, this module's patches,
    image, port), built here for the InferenceService, which kustomize cannot patch."""
    from deploykit.deploy import validate

    deployment = validate.load_documents(src / "base" / "deployment.yaml")[0]
    if cfg.gpu:
        deployment = merge(deployment, validate.load_documents(src / "overlays" / "gpu" / "gpu.yaml")[0])
    deployment = merge(deployment, _deployment_patch(cfg, values))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["image"] = cfg.image
    container["ports"][0]["containerPort"] = cfg.port
    container["args"] = ["serve", "--host", "0.0.0.0", "--port", str(cfg.port)]
    return deployment


def _kserve(cfg: KubeConfig, values: dict[str, str], src: Path) -> dict[str, dict[str, Any]]:
    """The files of a ``--kind kserve`` overlay: the InferenceService, and for ``--autoscale
    queue`` deploykit's HPA on its predictor."""
    max_replicas = cfg.max_replicas or 5 * cfg.replicas
    files = {"inferenceservice.yaml": kserve.inference_service(
        SERVER, server_deployment(cfg, values, src), mode=cfg.autoscaler, min_replicas=cfg.replicas,
        max_replicas=max_replicas, prometheus_url=cfg.prometheus_url, query=queue_wait_query(cfg),
        target_ms=cfg.queue_wait_target_ms, gpu=cfg.gpu)}
    if cfg.autoscaler == "queue":
        files["hpa.yaml"] = kserve.queue_hpa(SERVER, cfg.replicas, max_replicas, cfg.queue_wait_target_ms)
    return files


def adapter_rules_path(cfg: KubeConfig) -> Path:
    """Where ``--autoscale queue`` writes prometheus-adapter's rule: beside the overlay, not in it
    (``kubectl apply -k OUT`` never applies it; the cluster's adapter configuration takes it)."""
    out = Path(cfg.out)
    return out.with_name(out.name + "-adapter-rules.yaml")


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
        if cfg.kind == "kserve":
            files = _kserve(cfg, values, src)
            doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                   "resources": list(files)}
            if cfg.namespace:
                doc["namespace"] = cfg.namespace
        else:
            for rel in copies:
                shutil.copytree(src / rel, tmp / rel)
            doc, patches = kustomization(cfg, values, tmp, resource)
            (tmp / "patches").mkdir()
            for patch in patches:
                (tmp / patch["path"]).write_text(yaml.safe_dump(patch["body"], sort_keys=False))
            files = {} if cfg.train else _extra_resources(cfg)
        for name, body in files.items():
            (tmp / name).write_text(yaml.safe_dump(body, sort_keys=False))
        (tmp / "kustomization.yaml").write_text(
            "# Rendered by `deploykit k8s`; apply with: kubectl apply -k .\n"
            + yaml.safe_dump(doc, sort_keys=False))
        if cfg.validate:
            _validate(tmp, src / "crds")
    if not cfg.train and cfg.autoscaler == "queue":
        rules = adapter_rules_path(cfg)
        rules.write_text("# prometheus-adapter rule for `deploykit k8s --autoscale queue` (rendered beside the\n"
                         "# overlay, not in it): merge into the cluster's adapter configuration (Helm chart\n"
                         "# values: rules.custom), then the HPA's Pods metric "
                         f"{autoscale.ADAPTER_METRIC} exists.\n"
                         + yaml.safe_dump(autoscale.adapter_rules(), sort_keys=False))
        log.info("wrote %s: the prometheus-adapter rule the queue-wait HPA needs (for the cluster's adapter, "
                 "not for kubectl apply)", rules)
    log.info("wrote %s (apply with: kubectl apply -k %s)", out, out)
    return out


def _validate(folder: Path, crds: Path) -> None:
    """Build the overlay with kubectl kustomize and validate its core kinds strictly, and its custom
    resources (ScaledObject, InferenceService, TrainJob, RayJob) against their pinned CRDs in ``crds``."""
    from deploykit.deploy import crd, validate

    if validate.kubectl() is None:
        log.warning("kubectl not found: the overlay was written but not built or validated (install "
                    "kubectl to check it)")
        return
    core, pinned = crd.custom(validate.kustomize_build(folder))
    problems = validate.validate_documents(core) + crd.validate(pinned, crds)
    if problems:
        raise DeployKitError("the rendered overlay failed strict validation:\n  " + "\n  ".join(problems))
    log.info("built with kubectl kustomize and validated strictly against Kubernetes %s",
             ", ".join(validate.versions()))

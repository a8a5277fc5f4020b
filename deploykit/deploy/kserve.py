"""``deploykit k8s --kind kserve``: the service as a KServe ``InferenceService``.

The predictor runs the same bento image as the Deployment, with the same container: arguments,
port, ``DEPLOYKIT_*`` settings, probes, resources and locked-down security context, all read
from ``k8s/base/deployment.yaml`` (one source of truth) and patched with the artifact's values.
KServe runs it in its raw mode (plain Deployment and Service, no Knative): the annotation
``serving.kserve.io/deploymentMode`` is ``Standard`` from KServe 0.15 on (``RawDeployment``,
its old name, is still read as a deprecated alias). ``--autoscale`` maps onto KServe's own
autoscaler classes: ``cpu`` -> ``hpa`` on CPU, ``keda`` -> ``keda`` on the mean queue wait (an
``External`` prometheus metric, ``Value`` target) and CPU, ``queue`` -> ``external`` (KServe
makes no autoscaler) plus deploykit's own HPA on the queue-wait ``Pods`` metric, aimed at the
predictor's Deployment (``<name>-predictor``).
"""

from __future__ import annotations

import copy
from typing import Any

from deploykit.deploy import autoscale

KSERVE_RELEASE = "v0.20.0"  # the release whose InferenceService CRD is pinned in k8s/crds (deploy/crd.py)
DEPLOYMENT_MODE = "Standard"
CONTAINER = "kserve-container"  # the name KServe gives a predictor's main container


def inference_service(name: str, deployment: dict[str, Any], *, mode: str, min_replicas: int,
                      max_replicas: int, prometheus_url: str, query: str, target_ms: float,
                      gpu: bool) -> dict[str, Any]:
    """The InferenceService of the service.

    Args:
        name: Its name (the predictor's pods are ``<name>-predictor-...``).
        deployment: The rendered Deployment (k8s/base/deployment.yaml with the overlay's values):
            its pod's container, security context, grace period and annotations are reused.
        mode: ``cpu``, ``queue`` or ``keda`` (``--autoscale``).
        min_replicas, max_replicas: The predictor's bounds.
        prometheus_url, query, target_ms: The queue-wait metric (``keda``).
        gpu: No CPU metric beside the queue wait.
    """
    pod = deployment["spec"]["template"]["spec"]
    container = copy.deepcopy(pod["containers"][0])
    container["name"] = CONTAINER
    for env in container.get("env", []):  # e.g. DEPLOYKIT_THREADS from the container's CPU limit
        field = env.get("valueFrom", {}).get("resourceFieldRef")
        if field is not None and "containerName" in field:
            field["containerName"] = CONTAINER
    # Probes name the port "http"; KServe's predictor service targets the container's port too.
    annotations = dict(deployment["spec"]["template"]["metadata"].get("annotations", {}))
    predictor: dict[str, Any] = {
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "annotations": annotations,
        "containers": [container],
        "securityContext": pod["securityContext"],
        "terminationGracePeriodSeconds": pod["terminationGracePeriodSeconds"],
        "automountServiceAccountToken": pod["automountServiceAccountToken"],
        "volumes": pod.get("volumes", []),
    }
    for key in ("nodeSelector", "tolerations"):
        if key in pod:
            predictor[key] = pod[key]
    metadata_annotations = {"serving.kserve.io/deploymentMode": DEPLOYMENT_MODE}
    if mode == "cpu":
        metadata_annotations["serving.kserve.io/autoscalerClass"] = "hpa"
        predictor["autoScaling"] = {"metrics": [autoscale.cpu_metric()],
                                    "behavior": {"scaleDown": autoscale.SCALE_DOWN}}
    elif mode == "keda":
        metadata_annotations["serving.kserve.io/autoscalerClass"] = "keda"
        metrics: list[dict[str, Any]] = [{"type": "External", "external": {
            "metric": {"backend": "prometheus", "serverAddress": prometheus_url, "query": query},
            "target": {"type": "Value", "value": autoscale.seconds(target_ms)}}}]
        if not gpu:
            metrics.append(autoscale.cpu_metric())
        predictor["autoScaling"] = {"metrics": metrics, "behavior": {"scaleDown": autoscale.SCALE_DOWN}}
    else:  # queue: KServe makes no autoscaler; deploykit's HPA (queue_hpa) scales the predictor
        metadata_annotations["serving.kserve.io/autoscalerClass"] = "external"
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "annotations": metadata_annotations},
            "spec": {"predictor": predictor}}


def queue_hpa(name: str, min_replicas: int, max_replicas: int, target_ms: float) -> dict[str, Any]:
    """``--autoscale queue`` with KServe: an HPA on the queue wait of the predictor's Deployment."""
    return autoscale.hpa(name, "Deployment", f"{name}-predictor", min_replicas, max_replicas,
                         [autoscale.queue_metric(target_ms)])

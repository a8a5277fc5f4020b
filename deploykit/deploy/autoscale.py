"""The autoscalers ``deploykit k8s --autoscale`` renders, and the one queue-wait query they share.

- ``cpu``: the base's ``autoscaling/v2`` HPA on 70% CPU (k8s/base/hpa.yaml), as before.
- ``queue``: the same HPA on the per-pod mean queue wait, a ``Pods`` metric that
  prometheus-adapter serves; the adapter's rule is written as a separate file for the cluster's
  adapter configuration, never into the app's overlay (applying it there would replace the
  cluster's rules).
- ``keda``: a KEDA ``ScaledObject`` (and no HPA of ours: KEDA makes its own, and two
  autoscalers on one Deployment fight): a prometheus trigger on the mean queue wait with
  ``metricType: Value`` (the default ``AverageValue`` divides the query's result by the replica
  count, which is wrong for a mean latency) and an ``activationThreshold``, plus a CPU trigger
  (left out on a GPU), with the base HPA's scale-down behaviour.

Why the queue wait: under overload the service answers 503 early by design, so CPU can stay
flat while users are refused, and on a GPU pod CPU is the wrong signal altogether. The mean
queue wait (``deploykit_queue_wait_seconds``: the time a request waited for its first batcher
step) rises as soon as requests queue and is 0 when idle (tests/test_prometheus.py evaluates
these queries in a real Prometheus scraping a real service under overload).
"""

from __future__ import annotations

from typing import Any

AUTOSCALERS = ("cpu", "queue", "keda")
KEDA_RELEASE = "v2.20.2"  # the release whose ScaledObject CRD is pinned in k8s/crds (deploy/crd.py)
ADAPTER_METRIC = "deploykit_queue_wait_seconds_avg"
CPU_TARGET = 70  # percent, as k8s/base/hpa.yaml
# The base HPA's scale-down (k8s/base/hpa.yaml): after a burst wait 5 minutes, then remove
# one pod a minute.
SCALE_DOWN = {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}


def selector(namespace: str | None, pod_prefix: str) -> str:
    """The PromQL label matchers of this app's pods (the ``namespace`` and ``pod`` labels that
    Prometheus's Kubernetes pod discovery sets)."""
    matchers = [f'pod=~"{pod_prefix}-.+"']
    if namespace:
        matchers.insert(0, f'namespace="{namespace}"')
    return ",".join(matchers)


def mean_queue_wait(labels: str, window: str = "1m") -> str:
    """The mean seconds a request waited for its first step over ``window``, over every pod
    matching ``labels``: 0 when no request came (never NaN, so an idle app scales in)."""
    return (f"sum(rate(deploykit_queue_wait_seconds_sum{{{labels}}}[{window}])) / "
            f"clamp_min(sum(rate(deploykit_queue_wait_seconds_count{{{labels}}}[{window}])), 1e-9)")


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's rule that serves the per-pod mean queue wait as a ``Pods`` metric."""
    per_pod = "<<.LabelMatchers>>"
    return {"rules": [{
        "seriesQuery": 'deploykit_queue_wait_seconds_sum{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^deploykit_queue_wait_seconds_sum$", "as": ADAPTER_METRIC},
        "metricsQuery": (f"sum(rate(deploykit_queue_wait_seconds_sum{{{per_pod}}}[1m])) by (<<.GroupBy>>) / "
                         f"clamp_min(sum(rate(deploykit_queue_wait_seconds_count{{{per_pod}}}[1m])) by "
                         f"(<<.GroupBy>>), 1e-9)"),
    }]}


def queue_metric(target_ms: float) -> dict[str, Any]:
    """The HPA metric on the per-pod mean queue wait (each pod's own value, so AverageValue)."""
    return {"type": "Pods", "pods": {"metric": {"name": ADAPTER_METRIC},
                                     "target": {"type": "AverageValue", "averageValue": milli(target_ms)}}}


def cpu_metric() -> dict[str, Any]:
    return {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                        "averageUtilization": CPU_TARGET}}}


def hpa(name: str, target_kind: str, target_name: str, min_replicas: int, max_replicas: int,
        metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``autoscaling/v2`` HPA with the base's scale-down behaviour."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": target_kind, "name": target_name},
                     "minReplicas": min_replicas, "maxReplicas": max_replicas, "metrics": metrics,
                     "behavior": {"scaleDown": SCALE_DOWN}}}


def scaled_object(name: str, target: str, min_replicas: int, max_replicas: int, prometheus_url: str,
                  query: str, target_ms: float, cpu: bool) -> dict[str, Any]:
    """A KEDA ScaledObject: the mean queue wait (``metricType: Value``) and, unless ``cpu`` is
    False (a GPU pod), CPU utilisation.

    Args:
        name: The ScaledObject's name.
        target: The Deployment it scales.
        min_replicas, max_replicas: Its bounds.
        prometheus_url: The Prometheus KEDA queries.
        query: The PromQL of the mean queue wait (``mean_queue_wait``).
        target_ms: The mean queue wait to hold.
        cpu: Whether to add a CPU trigger.
    """
    triggers: list[dict[str, Any]] = [{
        "type": "prometheus", "metricType": "Value",
        "metadata": {"serverAddress": prometheus_url, "query": query, "threshold": seconds(target_ms),
                     # From 0 replicas' worth of activity (min > 0 here, so KEDA only reports
                     # activity): a tenth of the target counts as requests queueing.
                     "activationThreshold": seconds(target_ms / 10)}}]
    if cpu:
        triggers.append({"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(CPU_TARGET)}})
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": min_replicas,
                     "maxReplicaCount": max_replicas, "pollingInterval": 15,
                     "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": SCALE_DOWN}}},
                     "triggers": triggers}}


def desired_replicas(replicas: int, value: float, target: float) -> int:
    """What the HPA asks for from a ``metricType: Value`` metric: ceil(replicas x value / target),
    kept when within its 10% tolerance."""
    import math

    ratio = value / target
    return replicas if abs(ratio - 1) <= 0.1 else math.ceil(replicas * ratio)


def milli(ms: float) -> str:
    """Milliseconds as a Kubernetes quantity of seconds (100 -> "100m")."""
    return f"{ms:g}m"


def seconds(ms: float) -> str:
    """Milliseconds as a decimal string of seconds (100 -> "0.1"), KEDA's threshold format."""
    return f"{ms / 1000:g}"

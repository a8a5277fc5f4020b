"""Strict, offline validation of the custom resources ``deploykit k8s`` renders (KEDA's
ScaledObject, KServe's InferenceService, Kubeflow's TrainJob, KubeRay's RayJob) against their
pinned CRDs: the one validator for them, at render time and in the tests.

kubernetes-validate knows the core kinds only. A CRD carries its own OpenAPI v3 schema, which
the API server applies as a structural schema: unknown fields are pruned silently unless the
schema says ``x-kubernetes-preserve-unknown-fields``. Strict validation here rejects them instead
(a typo such as ``numProcsPerNode`` would otherwise vanish), and understands
``x-kubernetes-int-or-string``; the rest is plain JSON Schema (jsonschema's Draft 7 validator).
The CRDs are pinned release files kept in ``k8s/crds/`` (README there: source, version, sha256).
"""

from __future__ import annotations

import copy
import gzip
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from deploykit.errors import BadInputError

# kind -> (apiVersion, the pinned CRD file in k8s/crds/)
PINNED = {"TrainJob": ("trainer.kubeflow.org/v1alpha1", "trainer.kubeflow.org_trainjobs-v2.3.0.yaml.gz"),
          "RayJob": ("ray.io/v1", "ray.io_rayjobs-kuberay-v1.7.0.yaml.gz"),
          "ScaledObject": ("keda.sh/v1alpha1", "keda.sh_scaledobjects-v2.20.2.yaml.gz"),
          "InferenceService": ("serving.kserve.io/v1beta1", "serving.kserve.io_inferenceservices-v0.20.0.yaml.gz")}


def _strict(schema: Any) -> Any:
    """The schema with every object closed (``additionalProperties: false``) unless it preserves
    unknown fields or declares its own additional properties, and int-or-string made explicit."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    # An object with ``properties`` takes no other field (the API server's strict field validation),
    # whether or not it also says ``type: object``.
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def schema(kind: str, folder: str) -> dict[str, Any]:
    """The strict JSON schema of ``kind``'s served version, from its pinned CRD.

    Raises:
        BadInputError: No pinned CRD for the kind, or the version is not in it.
    """
    if kind not in PINNED:
        raise BadInputError(f"no pinned CRD for kind {kind}; deploykit pins {', '.join(PINNED)}")
    api_version, file = PINNED[kind]
    # KServe's CRD is 2 MB of YAML: libyaml's loader reads it in a second, the pure-Python one in ten.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress((Path(folder) / file).read_bytes()), Loader=loader)  # noqa: S506 (a safe loader)
    version = api_version.split("/")[1]
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            body = copy.deepcopy(served["schema"]["openAPIV3Schema"])
            # The API server checks metadata itself (names, labels); the CRD leaves it open.
            body.setdefault("properties", {})["metadata"] = {"type": "object"}
            return _strict(body)
    raise BadInputError(f"{file} does not serve {api_version}")


def validate(docs: Iterable[dict[str, Any]], folder: str | Path) -> list[str]:
    """Validate the custom resources among ``docs`` against their pinned CRDs.

    Args:
        docs: Parsed resources; kinds without a pinned CRD are skipped (kubernetes-validate's).
        folder: The folder of the pinned CRD files (``k8s/crds``).

    Returns:
        One line per problem: the resource, the field path and the reason (empty when valid).
    """
    import jsonschema

    problems = []
    for doc in docs:
        kind = (doc or {}).get("kind")
        if kind not in PINNED:
            continue
        name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
        if doc.get("apiVersion") != PINNED[kind][0]:
            problems.append(f"{name}: apiVersion {doc.get('apiVersion')!r}, the pinned CRD serves {PINNED[kind][0]}")
            continue
        validator = jsonschema.Draft7Validator(schema(kind, str(folder)))
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "(top)"
            problems.append(f"{name} ({PINNED[kind][0]}): {path}: {error.message[:300]}")
    return problems


def custom(docs: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split resources into (core kinds, kinds with a pinned CRD)."""
    core, pinned = [], []
    for doc in docs:
        (pinned if (doc or {}).get("kind") in PINNED else core).append(doc)
    return core, pinned

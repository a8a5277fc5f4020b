"""Strict, offline validation of Kubernetes manifests (kubernetes-validate) and kustomize builds.

kubernetes-validate bundles the JSON schemas of every Kubernetes minor release it supports, so
validation needs no cluster and no network. ``strict`` rejects unknown fields (a typo such as
``readinessProbes`` passes a lenient schema and is silently ignored by the API server).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

from deploykit.errors import BadInputError

OLDEST_SUPPORTED = "1.29"


def versions() -> list[str]:
    """The Kubernetes versions every manifest must validate against: 1.29 and the newest bundled."""
    import kubernetes_validate

    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    return [OLDEST_SUPPORTED] if newest == OLDEST_SUPPORTED else [OLDEST_SUPPORTED, newest]


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


def validate_documents(docs: Iterable[dict[str, Any]],
                       against: Iterable[str] | None = None) -> list[str]:
    """Validate resources strictly against each Kubernetes version.

    Args:
        docs: Parsed resources (kustomize's own Kustomization documents are skipped: they are
            not Kubernetes API objects and have no schema).
        against: Kubernetes versions (default: ``versions()``).

    Returns:
        One line per problem (empty when everything is valid), naming the resource, the
        version, the field path and the reason. A kind without a bundled schema is a problem
        too: deploykit's manifests use core kinds only.
    """
    import kubernetes_validate as kv

    problems = []
    for doc in docs:
        if not doc or doc.get("kind") in ("Kustomization", "Component"):
            continue
        for version in against or versions():
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{_name(doc)} (Kubernetes {version}): {path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                problems.append(f"{_name(doc)} (Kubernetes {version}): {exc.message}")
    return problems


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every YAML document of a file (or of every ``*.yaml`` file under a folder)."""
    path = Path(path)
    files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    docs = []
    for file in files:
        docs.extend(d for d in yaml.safe_load_all(file.read_text()) if d)
    return docs


def kubectl() -> str | None:
    """The kubectl binary, or None when it is not installed."""
    return shutil.which("kubectl")


def kustomize_build(folder: str | Path) -> list[dict[str, Any]]:
    """``kubectl kustomize FOLDER``, parsed.

    Raises:
        BadInputError: If kubectl is missing or the kustomization does not build.
    """
    binary = kubectl()
    if binary is None:
        raise BadInputError("kubectl is not installed; install it to build kustomize overlays")
    proc = subprocess.run([binary, "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise BadInputError(f"kubectl kustomize {folder} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]

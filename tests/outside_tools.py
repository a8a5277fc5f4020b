"""One policy for tests that need a tool from outside Python (kubectl, tritonserver, buildah, ...).

Under CI (``CI=true``) a missing tool fails the test, naming how to install it: CI provides
every tool a test needs (kubectl from the machine image, tritonserver from
.ci/setup_pytriton.sh, the container tools from Debian: ``DEBIAN``, which .ci/run installs with
``python3 tests/outside_tools.py --debian-packages``), so a missing one is a broken CI, never a
silent skip. Elsewhere the test is skipped with the same reason, so a developer sees what to
install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOW = {
    "kubectl": "install kubectl (https://kubernetes.io/docs/tasks/tools/, or Debian's 'kubernetes-client' "
               "package); CI's machine image has it",
    "tritonserver": "build its environment with 'bash .ci/setup_pytriton.sh' (needs PyPI; "
                    "the Triton tests run it themselves)",
    "buildah": "install it with 'apt-get install buildah'",
    "podman": "install it with 'apt-get install podman runc' (rootful: run the tests as root)",
    "runc": "install it with 'apt-get install runc' (podman runs the images with --runtime runc)",
    "debootstrap": "install it with 'apt-get install debootstrap' (it makes the offline base image)",
    "curl": "install it with 'apt-get install curl' (the README's container commands use it)",
    "openssl": "install it with 'apt-get install openssl' (the TLS test makes its certificate with it)",
    "prometheus": "install it with 'apt-get install prometheus' (the autoscaling test evaluates its "
                  "queries in a real Prometheus)",
    "root": "the image tests run rootful buildah and podman, as CI does: run them as root",
    "base image": "build it with 'k8s/offline/bookworm-python.sh' as root (needs debootstrap, a "
                  "Debian mirror and PyPI)",
}
# The tools CI installs from Debian (the package of each): the container tests' engines, the
# offline base image's debootstrap, openssl for the TLS test's certificate and Prometheus for the
# autoscaling test.
DEBIAN = {"buildah": "buildah", "podman": "podman", "runc": "runc", "debootstrap": "debootstrap",
          "curl": "curl", "openssl": "openssl", "prometheus": "prometheus"}
BASE_IMAGE = "localhost/bookworm-python:3.11"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(tool: str, detail: str = "") -> None:
    """Fail (under CI) or skip (elsewhere) because ``tool`` is not available."""
    import pytest  # here, so that .ci/run can read DEBIAN with a bare python3

    message = f"{tool} is not available{': ' + detail if detail else ''}; {HOW[tool]}"
    if in_ci():
        pytest.fail(f"CI must provide {tool}: {message}", pytrace=False)
    pytest.skip(message)


def require_binary(tool: str) -> str:
    """The path of a binary on PATH, or fail/skip by the policy above."""
    path = shutil.which(tool)
    if path is None:
        missing(tool, "not on PATH")
    return path


def container_tools() -> dict[str, str]:
    """The container tools' paths: rootful buildah and podman with runc, debootstrap, curl."""
    paths = {tool: require_binary(tool) for tool in ("buildah", "podman", "runc", "debootstrap", "curl")}
    if os.geteuid() != 0:
        missing("root", f"running as uid {os.geteuid()}")
    return paths


def base_image() -> str:
    """The offline base image, made (or restored from the cache) by k8s/offline/bookworm-python.sh.

    The script keeps a current image and restores a cached one in seconds; it builds (about a
    minute) only when it changed. The cache is $DEPLOYKIT_BASE_CACHE (default ~/.cache/deploykit).
    """
    cache = os.environ.get("DEPLOYKIT_BASE_CACHE") or str(Path.home() / ".cache" / "deploykit")
    proc = subprocess.run(["bash", str(ROOT / "k8s" / "offline" / "bookworm-python.sh"), BASE_IMAGE],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "DEPLOYKIT_BASE_CACHE": cache})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        missing("base image", f"k8s/offline/bookworm-python.sh failed:\n" + "\n".join(tail))
    return BASE_IMAGE


def pytriton_venv() -> Path:
    """The PyTriton environment, built (or found ready) by .ci/setup_pytriton.sh.

    The script is idempotent and takes a lock, so calling it every session costs a stamp check.
    """
    venv = Path(os.environ.get("DEPLOYKIT_PYTRITON_VENV", ROOT / ".venv-pytriton"))
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "setup_pytriton.sh"), str(venv)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        missing("tritonserver", f"building {venv} failed:\n" + "\n".join(tail))
    return venv


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--debian-packages"]:
        raise SystemExit("usage: python3 tests/outside_tools.py --debian-packages")
    print(" ".join(sorted(set(DEBIAN.values()))))

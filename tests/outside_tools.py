"""One policy for tests that need a tool from outside Python (kubectl, tritonserver, buildah).

Under CI (``CI=true``) a missing tool fails the test, naming how to install it: CI provides
every tool a test needs (kubectl from the machine image, tritonserver from
.ci/setup_pytriton.sh), so a missing one is a broken CI, never a silent skip. Elsewhere the
test is skipped with the same reason, so a developer sees what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HOW = {
    "kubectl": "install kubectl (https://kubernetes.io/docs/tasks/tools/, or Debian's 'kubernetes-client' "
               "package); CI's machine image has it",
    "tritonserver": "build its environment with 'bash .ci/setup_pytriton.sh' (needs PyPI; "
                    "the Triton tests run it themselves)",
    "buildah": "install it with 'apt-get install buildah'",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(tool: str, detail: str = "") -> None:
    """Fail (under CI) or skip (elsewhere) because ``tool`` is not available."""
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

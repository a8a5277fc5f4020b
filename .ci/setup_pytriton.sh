#!/usr/bin/env bash
# Build the virtual environment that holds the real `tritonserver` binary for the Triton tests.
#
# nvidia-pytriton bundles a CPU-capable tritonserver with the Python backend, but pins numpy<2,
# so it cannot live in the project's own environment: it gets .ci/pytriton-requirements.txt
# (pinned). deploykit's runtime, which the Python-backend models import, comes from the
# checkout that last ran this script, through a .pth file rewritten on every run (tritonserver's
# Python stub ignores PYTHONPATH but reads the venv's site-packages): the heavy part serves any
# checkout and can be cached (CI keeps it under ~/.cache, see .ci/run).
#
# The tests call this script themselves (a session fixture in tests/conftest.py), so a plain
# `python -m pytest` builds it on first use. Idempotent: a stamp holding the sha256 of this
# script, of the requirements and the Python version marks a finished build; a change to any
# of them, or an interrupted build (no stamp), starts over. Concurrent runs wait on a lock.
#
# Usage: bash .ci/setup_pytriton.sh [VENV]   (default: $DEPLOYKIT_PYTRITON_VENV or .venv-pytriton)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${DEPLOYKIT_PYTRITON_VENV:-.venv-pytriton}}"
PYTHON="${PYTHON:-python3}"
REQS=.ci/pytriton-requirements.txt
STAMP="$VENV/.deploykit-ready"
want="$(cat .ci/setup_pytriton.sh "$REQS" | sha256sum | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
# Point the venv at this checkout's deploykit (like an editable install, without pip).
link_checkout() {
  local site
  site="$(echo "$VENV"/lib/python3*/site-packages)"
  echo "$PWD" > "$site/deploykit-checkout.pth"
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  link_checkout
  echo "pytriton venv ready: $VENV (deploykit from $PWD)"
  exit 0
fi
echo "building the pytriton venv $VENV (tritonserver for the Triton tests; about a minute)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r "$REQS"
# pytriton copies the stub matching the interpreter next to the Python backend at run time;
# the tests run the bare binary, so put it there once.
"$VENV/bin/python" - <<'PY'
import pathlib, shutil, sys, pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
assert stub.is_file(), f"pytriton ships no Python-backend stub for Python {sys.version_info[:2]} ({stub})"
shutil.copy2(stub, root / "backends" / "python" / "triton_python_backend_stub")
PY
link_checkout
# Fail here, not in a test, when the binary or the runtime is unusable.
"$VENV/bin/python" - <<'PY'
import pathlib, pytriton, numpy, onnxruntime, tokenizers
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
server = root / "bin" / "tritonserver"
assert server.is_file(), f"no tritonserver binary at {server}"
assert (root / "backends" / "python" / "triton_python_backend_stub").is_file(), "no Python-backend stub"
import deploykit.runtime  # noqa: F401  (torch-free import path the Python-backend model uses)
print("tritonserver:", server, "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)
PY
echo "$want" > "$STAMP"
echo "pytriton venv ready: $VENV (deploykit from $PWD)"

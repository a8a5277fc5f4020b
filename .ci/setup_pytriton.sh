#!/usr/bin/env bash
# Build the virtual environment that holds the real `tritonserver` binary for the Triton tests.
#
# nvidia-pytriton bundles a CPU-capable tritonserver with the Python backend, but pins numpy<2,
# so it cannot live in the project's own environment. The Python-backend model deploykit writes
# imports deploykit's torch-free runtime, so deploykit goes in with --no-deps (editable: the
# tests always exercise the checkout's code) plus the runtime's own needs.
#
# Idempotent: a stamp holding this script's sha256 and the checkout's path marks a finished
# build; a changed script, a moved checkout or an interrupted build (no stamp) starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEPLOYKIT_PYTRITON_VENV:-.venv-pytriton}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.deploykit-ready"
# The editable install points at this checkout, so a venv built for another one is rebuilt.
want="$(sha256sum .ci/setup_pytriton.sh | cut -d' ' -f1) $PWD"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "pytriton venv ready: $VENV"
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.20" "tokenizers>=0.20" "pyyaml>=6.0"
"$VENV/bin/python" -m pip install -q --no-deps -e .
# pytriton copies the stub matching the interpreter next to the Python backend at run time;
# the tests run the bare binary, so put it there once.
"$VENV/bin/python" - <<'PY'
import pathlib, shutil, sys, pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
assert stub.is_file(), f"pytriton ships no Python-backend stub for Python {sys.version_info[:2]} ({stub})"
shutil.copy2(stub, root / "backends" / "python" / "triton_python_backend_stub")
PY
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
echo "pytriton venv ready: $VENV"

"""Remove from a serving image what serving never uses; run inside the image at build time.

``deploykit containerize`` copies this file into the bento (``env/docker/slim.py``) and runs it
as the last build step, as root, with the image's own Python (``/app/.venv/bin/python``), after
the Python packages are installed and before the bento's files are copied in. The engine then
squashes the image into one layer, so what is removed here is really gone (a later layer that
deletes a file does not shrink an image). It imports nothing from deploykit: deploykit's source
is not in the image yet at that point.

Each rule removes one kind of file and says why serving does not need it; the script prints the
bytes each rule removed (the build log shows them). After the removals it imports the serving
stack (``SERVING_MODULES``): an import that fails stops the build, so a rule can never remove
something the service imports. Bytecode of modules that import did not load is removed last: a
missing ``.pyc`` only means Python compiles that module from source if it is ever imported.

Usage (inside the image): ``python slim.py [--dry-run]``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

# What the service's processes import at start: the `bentoml serve` command (its arbiter) and
# the worker it spawns (BentoML's own modules, uvicorn with the uvloop and httptools it picks,
# OpenTelemetry's middleware, Prometheus), and what deploykit's service and runtime import
# (numpy, onnxruntime, tokenizers, orjson, yaml, jinja2's sandbox for chat templates).
# Measured on a running service: these cover 899 of the 1,017 site-packages modules it loads.
SERVING_MODULES = (
    "bentoml", "bentoml_cli.cli", "bentoml_cli.serve", "_bentoml_impl.server.serving",
    "_bentoml_impl.server.app", "_bentoml_impl.worker.service", "uvicorn.main",
    "uvicorn.loops.uvloop", "uvicorn.protocols.http.httptools_impl", "uvicorn.lifespan.on",
    "opentelemetry.sdk.trace", "opentelemetry.instrumentation.asgi", "prometheus_client",
    "numpy", "onnxruntime", "tokenizers", "orjson", "yaml", "jinja2.sandbox",
)
# Python packages (by the dist-info name) the service never loads although a dependency
# declares them: hf-xet is huggingface_hub's download accelerator (tokenizers requires
# huggingface_hub for `from_pretrained`; deploykit reads tokenizer.json from the artifact).
UNUSED_DISTRIBUTIONS = ("hf_xet",)
# Parts of packages that serving keeps but never imports: onnxruntime's export-time tools
# (graph optimizer, quantizer, model tools: deploykit's export uses them, in the training
# environment), and numpy's build-time files (C headers, static libraries, f2py, distutils).
UNUSED_SUBTREES = (
    "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools",
    "numpy/f2py", "numpy/distutils", "numpy/_pyinstaller", "numpy/_core/include",
    "numpy/_core/lib",
)
CACHES = ("/root/.cache",)
log = logging.getLogger("deploykit.slim")  # uv's download cache from the package install


def _files(path: Path) -> Iterator[Path]:
    """``path`` itself if it is a file or a link, else every file and link under it."""
    if path.is_symlink() or path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in path.rglob("*") if p.is_symlink() or p.is_file())


def _remove(paths: Iterable[Path], dry_run: bool, keep: set[tuple[int, int]] = frozenset()) -> int:
    """Delete ``paths`` (files or folders) and return the bytes that frees.

    A file counts once however many of its hard links go, and not at all when its inode is in
    ``keep``: uv links the files of its cache into the environment, so removing the cache frees
    only what the environment does not also hold. (st_nlink cannot tell: overlay storage
    reports the lower layer's link count.)
    """
    sizes: dict[tuple[int, int], int] = {}
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    for path in existing:
        for f in _files(path):
            st = f.lstat()
            if (st.st_dev, st.st_ino) not in keep:
                sizes[(st.st_dev, st.st_ino)] = st.st_size
    if not dry_run:
        for path in existing:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()
    return sum(sizes.values())


def _inodes(root: Path) -> set[tuple[int, int]]:
    return {(st.st_dev, st.st_ino) for st in (f.lstat() for f in _files(root))}


def uv_binaries() -> list[Path]:
    """uv (and uvx): BentoML's Dockerfile installs the packages with it; nothing runs it later."""
    found = [shutil.which(name) for name in ("uv", "uvx")]
    return [Path(p) for p in found if p]


def package_tests(site: Path) -> list[Path]:
    """Packages' own test suites (``tests/`` folders inside installed packages)."""
    return sorted(p for p in site.glob("*/**/tests") if p.is_dir())


def subtrees(site: Path) -> list[Path]:
    """``UNUSED_SUBTREES`` that exist, plus numpy's SIMD test helper module."""
    return [site / rel for rel in UNUSED_SUBTREES] + sorted(site.glob("numpy/_core/_simd.*.so"))


def _record(info: Path) -> list[str]:
    """The paths a dist-info's RECORD lists (relative to site-packages, inside it)."""
    record = info / "RECORD"
    lines = record.read_text().splitlines() if record.is_file() else []
    return [rel for rel in (line.split(",", 1)[0] for line in lines)
            if rel and not rel.startswith(("..", "/"))]


def distribution_files(site: Path, names: Iterable[str]) -> list[Path]:
    """What distributions ``names`` installed: the files their RECORD lists, the top-level
    folders no other distribution installs into (with the bytecode compiled there), and their
    dist-info folders."""
    infos = {info: _record(info) for info in site.glob("*.dist-info")}
    out: list[Path] = []
    for name in names:
        for info in site.glob(f"{name}-*.dist-info"):
            files = infos[info]
            others = {r.split("/", 1)[0] for i, rel in infos.items() if i != info for r in rel}
            tops = {r.split("/", 1)[0] for r in files if "/" in r} - others
            out += [site / r for r in files if r.split("/", 1)[0] not in tops]
            out += [site / t for t in sorted(tops) if (site / t).is_dir()]
    return out


def needed_libraries(library: Path) -> str:
    """What ``ldd`` resolves for ``library`` ('' if ldd is missing or fails)."""
    if shutil.which("ldd") is None:
        return ""
    proc = subprocess.run(["ldd", str(library)], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def unlinked_onnxruntime_library(site: Path) -> list[Path]:
    """onnxruntime's ``libonnxruntime.so``, when no shared object of the package links it.

    The wheel ships it for C/C++ programs; the Python binding has the runtime compiled in (``ldd``
    of ``onnxruntime_pybind11_state*.so`` does not list it). Kept if ldd is missing or any
    library in ``onnxruntime/capi`` needs it.
    """
    capi = site / "onnxruntime" / "capi"
    libraries = sorted(capi.glob("libonnxruntime.so*"))
    if not libraries:
        return []
    others = [p for p in capi.glob("*.so*") if p not in libraries]
    outputs = [needed_libraries(p) for p in others]
    if not others or any(out == "" for out in outputs) or any("libonnxruntime.so" in o for o in outputs):
        return []
    return libraries


def stubs(site: Path) -> list[Path]:
    """Type stubs (``*.pyi``): read by type checkers, never by the interpreter."""
    return sorted(site.rglob("*.pyi"))


def imported_files(modules: Iterable[str], python: str = sys.executable) -> set[str]:
    """The source files of every module that importing ``modules`` loads (in a new process).

    Raises:
        RuntimeError: If an import fails (a removal took something serving needs).
    """
    code = ("import importlib, json, sys\n"
            f"for name in {list(modules)!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))")
    # Importing writes: BentoML creates its home, onnxruntime its telemetry files under
    # ~/.cache. Into a throwaway folder, so the image keeps none of it.
    with tempfile.TemporaryDirectory(prefix="slim-") as home:
        env = {**os.environ, "HOME": home, "XDG_CACHE_HOME": home, "BENTOML_HOME": home,
               "ORT_DISABLE_TELEMETRY": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the serving stack no longer imports:\n{proc.stderr[-3000:]}")
    return {os.path.realpath(f) for f in json.loads(proc.stdout.strip().splitlines()[-1]) if f}


def unused_bytecode(roots: Iterable[Path], imported: set[str]) -> list[Path]:
    """``__pycache__/*.pyc`` under ``roots`` whose module ``imported`` does not hold."""
    out = []
    for root in roots:
        for pyc in root.rglob("__pycache__/*.pyc"):
            source = pyc.parent.parent / (pyc.name.split(".", 1)[0] + ".py")
            if os.path.realpath(source) not in imported:
                out.append(pyc)
    return sorted(out)


def rules(site: Path) -> Iterator[tuple[str, Callable[[], list[Path]]]]:
    """(name, what to remove) in the order they run; bytecode comes last, in ``main``."""
    yield "uv (build time only)", uv_binaries
    yield "tests", lambda: package_tests(site)
    yield "export-time and build-time subpackages", lambda: subtrees(site)
    yield "unlinked libonnxruntime.so", lambda: unlinked_onnxruntime_library(site)
    yield "unused distributions (" + ", ".join(UNUSED_DISTRIBUTIONS) + ")", \
        lambda: distribution_files(site, UNUSED_DISTRIBUTIONS)
    yield "type stubs", lambda: stubs(site)


def main(argv: list[str] | None = None) -> int:
    """Apply every rule to this interpreter's environment and print the bytes each removed."""
    args = sys.argv[1:] if argv is None else argv
    dry_run = "--dry-run" in args
    site = Path(sysconfig.get_paths()["purelib"])
    # The cache first: what it shares with the environment is freed by the rules that follow.
    report = {"package caches": _remove([Path(p) for p in CACHES], dry_run, _inodes(Path(sys.prefix)))}
    for name, paths in rules(site):
        report[name] = _remove(paths(), dry_run)
    imported = imported_files(SERVING_MODULES)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    report["bytecode of modules serving does not import"] = _remove(
        unused_bytecode([site, stdlib], imported), dry_run)
    for name, freed in report.items():
        log.info("slim: %7.1f MB  %s", freed / 1e6, name)
    log.info("slim: %7.1f MB  in all%s", sum(report.values()) / 1e6, " (dry run)" if dry_run else "")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # the build log
    sys.exit(main())

"""``deploykit build``: pack the service, an artifact and deploykit itself into a bento.

The build context is generated in a temporary folder:

    service.py          re-exports deploykit.serve.service:Classifier
    artifact/           the packed variants only, tokenizer/config files, and a manifest.json
                        rewritten to list exactly the files present
    wheels/deploykit-*.whl   built from this checkout (deploykit is not on a package index)
    bentofile.yaml      python.packages = deploykit's base requirements (no torch,
                        transformers or datasets), lock_packages false, DEPLOYKIT_ARTIFACT=artifact

and ``bentoml build`` (its Python API) stores the bento in ``$BENTOML_HOME``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from deploykit.config import BuildConfig
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

SERVICE_SHIM = '''"""Entry point of the bento: deploykit's service, installed from the packed wheel."""

import os
from pathlib import Path

# DEPLOYKIT_ARTIFACT defaults to the packed artifact, and a relative value is relative to
# this folder (the bento's src/): the image's working directory is the bento's root, and
# 'bentoml serve TAG' on a host does not apply the bento's envs at all.
_value = os.environ.get("DEPLOYKIT_ARTIFACT") or "artifact"
os.environ["DEPLOYKIT_ARTIFACT"] = str(Path(__file__).resolve().parent / _value)

from deploykit.serve.service import Classifier  # noqa: E402,F401
'''


def _choose_variants(manifest: Manifest, requested: str | None, device: str = "cpu") -> list[str]:
    """The variants to pack: ``--variants`` (each must be servable on ``device``), else the one
    ``Manifest.pick`` serves on ``device``."""
    if not requested:
        return [manifest.pick(None, device).name]
    names = [v.strip() for v in requested.split(",") if v.strip()]
    if not names:
        raise BadInputError("--variants is empty; name at least one variant, e.g. --variants int8")
    for name in names:
        manifest.pick(name, device, option="--variants")  # raises on unknown or unservable
    return list(dict.fromkeys(names))


def write_artifact(source: Path, target: Path, manifest: Manifest, variants: list[str]) -> None:
    """Copy the artifact with only ``variants`` from ``source`` to ``target``; the copy's manifest
    (``Manifest.for_copy``) lists exactly the files present."""
    packed = manifest.for_copy(variants)
    for name in packed.files:
        dest = target.joinpath(*Path(name).parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, dest)
    packed.write(target)


def bento_tag(cfg: BuildConfig, manifest: Manifest) -> str:
    """``--tag``, else ``deploykit-<model name>``, checked against BentoML's tag rule now.

    Raises:
        BadInputError: If BentoML would refuse the tag.
    """
    from bentoml import Tag

    tag = cfg.tag or f"deploykit-{manifest.name}"
    try:
        Tag.from_taglike(tag)
    except ValueError as exc:
        raise BadInputError(f"bento tag {tag!r}: {exc}; pass another --tag") from None
    return tag


def source_root() -> Path:
    """The checkout deploykit is imported from (it must hold pyproject.toml).

    Raises:
        BadInputError: If deploykit runs from an installed wheel rather than a checkout.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise BadInputError(f"deploykit build packs deploykit as a wheel built from its source "
                            f"checkout, but {root} has no pyproject.toml; run it from a git checkout "
                            "installed with 'pip install -e .'")
    return root


def build_wheel(root: Path, out: Path) -> Path:
    """Build deploykit's wheel from the checkout into ``out`` (no network, no build isolation)."""
    out.mkdir(parents=True, exist_ok=True)
    # A scratch copy of the sources: setuptools writes build/ and *.egg-info into the tree
    # it builds, and the checkout should stay clean.
    with tempfile.TemporaryDirectory(prefix="deploykit-src-") as scratch:
        src = Path(scratch) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(root / "deploykit", src / "deploykit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "--no-index", "-q", "-w", str(out), str(src)],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployKitError(f"building the deploykit wheel failed:\n{result.stderr[-2000:]}")
    wheels = sorted(out.glob("deploykit-*.whl"))
    if not wheels:
        raise DeployKitError(f"pip wheel wrote no deploykit wheel into {out}")
    return wheels[-1]


def wheel_requirements(wheel: Path) -> list[str]:
    """The base (no extras) requirements a wheel declares."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode("utf-8").splitlines()
    reqs = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def bentofile(tag: str, wheel_name: str, packages: list[str]) -> dict[str, Any]:
    """The generated bentofile.yaml content."""
    name, _, version = tag.partition(":")
    return {
        "service": "service:Classifier",
        "name": name,
        "labels": {"owner": "deploykit"},
        "include": ["service.py", "artifact/**"],
        "python": {"packages": packages, "wheels": [f"wheels/{wheel_name}"],
                   # deploykit is not on an index, and locking would resolve against one.
                   "lock_packages": False},
        # Relative to the bento's src/ (service.py resolves it), so it holds in the image too.
        "envs": [{"name": "DEPLOYKIT_ARTIFACT", "value": "artifact"},
                 {"name": "BENTOML_DO_NOT_TRACK", "value": "True"}],
    }


def run(cfg: BuildConfig, device: str = "cpu") -> str:
    """Build the bento.

    Args:
        cfg: The build configuration.
        device: Where the bento will run (``cuda`` for the GPU image): the variant packed by
            default is the one ``Manifest.pick`` serves there.

    Returns:
        The bento's tag (``name:version``).

    Raises:
        BadInputError: Bad artifact or variant names, or no source checkout.
        IntegrityError: An artifact file does not match its manifest.
    """
    source = Path(cfg.artifact)
    manifest = Manifest.verify(source)
    variants = _choose_variants(manifest, cfg.variants, device)
    root = source_root()
    tag = bento_tag(cfg, manifest)
    name, _, version = tag.partition(":")
    if cfg.bentoml_home:
        os.environ["BENTOML_HOME"] = str(Path(cfg.bentoml_home).resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    with tempfile.TemporaryDirectory(prefix="deploykit-bento-") as tmp:
        ctx = Path(tmp)
        write_artifact(source, ctx / "artifact", manifest, variants)
        wheel = build_wheel(root, ctx / "wheels")
        (ctx / "service.py").write_text(SERVICE_SHIM)
        spec = bentofile(tag, wheel.name, wheel_requirements(wheel))
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        log.info("building bento %s with variant(s) %s", name, ", ".join(variants))
        import bentoml

        # BentoML resolves the wheel path against the working directory and refuses paths
        # outside it, so build from inside the context.
        previous = os.getcwd()
        os.chdir(ctx)
        try:
            bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx),
                                                   version=version or None)
        finally:
            os.chdir(previous)
    log.info("built bento %s", bento.tag)
    return str(bento.tag)

"""``deploykit build``: pack the service, an artifact and deploykit itself into a bento.

The bento is defined once, by bentofile.yaml at the repository root; the package ships a
byte-identical copy (``TEMPLATE``) so this works from an installed wheel too. ``run`` stages
the build context that file describes in a temporary folder,

    bentofile.yaml      the template, as is
    deploykit/          the installed package's source (the bento's own code: BentoML 1.4's
                        bento v2 layout has no ``python.wheels``, and deploykit is on no index)
    artifact/           the packed variants only, tokenizer/config files, and a manifest.json
                        rewritten to list exactly the files present

and calls ``bentoml build`` (its Python API) there, so ``bentoml build`` at the repository root
with a trimmed ``artifact/`` (``--context .`` writes one) gives the same bento.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
from pathlib import Path

from deploykit.config import BuildConfig
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # the deploykit package folder being run
TEMPLATE = Path(__file__).with_name("bentofile.yaml")
ARTIFACT_DIR = "artifact"  # where the bentofile's include and DEPLOYKIT_ARTIFACT expect it


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


def _copy_file(src: Path, dest: Path) -> None:
    """Copy one file into a build context; an identical file already there is kept.

    Raises:
        BadInputError: If a different file is already there (a context is never overwritten).
    """
    if dest.exists():
        if not filecmp.cmp(src, dest, shallow=False):
            raise BadInputError(f"{dest} already exists and differs from deploykit's {src.name}; "
                                "give --context an empty folder or a deploykit checkout")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def write_context(source: Path, manifest: Manifest, variants: list[str], ctx: Path) -> None:
    """Write (or complete) the build context bentofile.yaml describes into ``ctx``.

    ``ctx/artifact`` must not exist; the template and deploykit's source are copied unless the
    same files are already there (a checkout's root already holds them).

    Raises:
        BadInputError: If ``ctx/artifact`` exists, or ``ctx`` holds other versions of the files.
    """
    target = ctx / ARTIFACT_DIR
    if target.exists():
        raise BadInputError(f"{target} already exists; remove it or give --context another folder")
    _copy_file(TEMPLATE, ctx / "bentofile.yaml")
    for path in sorted(PACKAGE.rglob("*.py")):  # what the bentofile's include takes
        if "__pycache__" not in path.parts:
            _copy_file(path, ctx / "deploykit" / path.relative_to(PACKAGE))
    tmp = Path(tempfile.mkdtemp(prefix=f".{ARTIFACT_DIR}.tmp-", dir=ctx))
    try:  # written aside, then renamed: never a half-written artifact
        write_artifact(source, tmp, manifest, variants)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: BuildConfig, device: str = "cpu") -> str:
    """Build the bento (or, with ``cfg.context``, only write its build context).

    Args:
        cfg: The build configuration.
        device: Where the bento will run (``cuda`` for the GPU image): the variant packed by
            default is the one ``Manifest.pick`` serves there.

    Returns:
        The bento's tag (``name:version``), or the context folder with ``cfg.context``.

    Raises:
        BadInputError: Bad artifact or variant names, or a context folder in the way.
        IntegrityError: An artifact file does not match its manifest.
    """
    source = Path(cfg.artifact)
    manifest = Manifest.verify(source)
    variants = _choose_variants(manifest, cfg.variants, device)
    if cfg.context:
        ctx = Path(cfg.context)
        write_context(source, manifest, variants, ctx)
        log.info("wrote the build context to %s with variant(s) %s (build with: cd %s && "
                 "bentoml build)", ctx, ", ".join(variants), ctx)
        return str(ctx)
    tag = bento_tag(cfg, manifest)
    name, _, version = tag.partition(":")
    if cfg.bentoml_home:
        os.environ["BENTOML_HOME"] = str(Path(cfg.bentoml_home).resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    with tempfile.TemporaryDirectory(prefix="deploykit-bento-") as tmp:
        ctx = Path(tmp)
        write_context(source, manifest, variants, ctx)
        log.info("building bento %s with variant(s) %s", name, ", ".join(variants))
        import bentoml

        bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx),
                                               name=name, version=version or None)
    log.info("built bento %s", bento.tag)
    return str(bento.tag)

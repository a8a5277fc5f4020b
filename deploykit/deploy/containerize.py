"""Container images: the serving image (a bento, via BentoML's containerize) and the training image.

The serving image is BentoML's own: its Dockerfile comes from BentoML's generator (the
``base_v2`` template: non-root user ``bentoml``, port 3000, ``bentoml serve`` entrypoint) and
its build from BentoML's OCI builders. deploykit only sets BentoML's knobs on a private copy of
the bento before generating it: the base image, no compiler or git (BentoML's default Debian
install command adds ``build-essential`` and ``git``, which nothing here needs: every
dependency ships wheels), and for ``--gpu`` onnxruntime-gpu with the CUDA provider settings.
The user's bento in the store is never modified.

What serving never uses is removed in the image's last build step (``deploykit/deploy/slim.py``:
uv, caches, test suites, onnxruntime's export tools and its unlinked C library, bytecode of
modules the service does not import) and buildah and podman squash the image into one layer,
so the removals really shrink it. The image is built under a staging name and gets its tag only
once it is complete and its digest is known (from ``push --digestfile`` to an OCI archive), so
a failure leaves no image under the tag. The image runs on a read-only root filesystem: the
service writes only below ``/tmp`` (``BENTOML_HOME=/tmp/bentoml``, Python's temporary files),
onnxruntime's telemetry is off, and nothing else is written.

The training image is ``k8s/training/Dockerfile`` built with the same backends, and so is the
batch-scoring image (``--ray``: ``k8s/batch/Dockerfile``, deploykit[ray] and the artifact), which
``deploykit k8s --batch-job`` runs as a KubeRay RayJob.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from deploykit import __version__
from deploykit.config import CONTAINER_BACKENDS, ContainerizeConfig
from deploykit.deploy import engines
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import MANIFEST, Manifest

log = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = "python:3.11-slim"
GPU_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"
# The CUDA and cuDNN libraries come as pip wheels through these extras, so the GPU image
# needs no CUDA base image (the host only needs the NVIDIA driver).
GPU_RUNTIME = "onnxruntime-gpu[cuda,cudnn]"
# Never in a serving image (docs/architecture.md: serving depends on the artifact alone).
FORBIDDEN = ("torch", "transformers", "datasets", "optimum", "optimum-onnx")
TRAIN_DOCKERFILE = Path("k8s") / "training" / "Dockerfile"
RAY_DOCKERFILE = Path("k8s") / "batch" / "Dockerfile"
SLIM_SCRIPT = Path(__file__).with_name("slim.py")
# The image's own settings for a read-only root, so it writes nothing outside /tmp (the
# Deployment's emptyDir) even when run without the Deployment's environment: BentoML's home
# (Prometheus multiprocess files) on /tmp; no bytecode written next to deploykit's source; no
# onnxruntime telemetry (it writes a device id and an event database under $HOME/.cache and a
# session file in the working directory). Appended to the end of the Dockerfile: BentoML's own
# `ENV BENTOML_HOME=/home/bentoml/` would win over a bento env of the same name.
IMAGE_ENVS = {"BENTOML_HOME": "/tmp/bentoml", "PYTHONDONTWRITEBYTECODE": "1",
              "ORT_DISABLE_TELEMETRY": "1"}
# Squash every layer into one (buildah's --squash includes the base image's layers; podman
# needs --squash-all). A failed buildah build leaves no container behind (checked by
# tests/test_images.py).
BUILD_OPTIONS = {"buildah": {"squash": True},
                 "podman": {"squash_all": True},
                 "docker": {}}
STAGING = "localhost/deploykit-staging"


class BackendUnavailableError(BadInputError):
    """No container engine (docker, buildah, podman) can build here; the message says why."""


@dataclass
class Backend:
    """One container engine and whether it can build right now."""

    name: str
    binary: str | None
    usable: bool
    reason: str


# BentoML's own health() checks only that a binary exists (buildah, podman) or raises when the
# docker daemon is down, and says nothing about why; these probes run the engine's info command
# so the error can tell the user what to fix.
_INFO = {"docker": ["version", "--format", "{{.Server.Version}}"],
         "buildah": ["info"],
         "podman": ["info", "--format", "{{.Host.OCIRuntime.Name}}"]}


def probe_backends(names: tuple[str, ...] = CONTAINER_BACKENDS) -> list[Backend]:
    """Check each container engine in order.

    Returns:
        One ``Backend`` per name, with the reason an unusable one cannot build.
    """
    found = []
    for name in names:
        binary = shutil.which(name)
        if binary is None:
            found.append(Backend(name, None, False, f"'{name}' is not on PATH"))
            continue
        try:
            proc = subprocess.run([binary, *_INFO[name]], capture_output=True, text=True,
                                  timeout=30)
        except subprocess.TimeoutExpired:
            found.append(Backend(name, binary, False, f"'{name} {_INFO[name][0]}' timed out"))
            continue
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            found.append(Backend(name, binary, False,
                                 f"'{name} {_INFO[name][0]}' failed: {lines[-1]}"))
        else:
            found.append(Backend(name, binary, True, "ok"))
    return found


def pick_backend(requested: str | None) -> str:
    """The backend to build with: the one asked for, else the first usable one.

    Raises:
        BackendUnavailableError: Naming every backend tried and why it is unusable.
    """
    tried = probe_backends((requested,) if requested else CONTAINER_BACKENDS)
    for backend in tried:
        if backend.usable:
            log.info("building with %s (%s)", backend.name, backend.binary)
            return backend.name
    lines = "\n".join(f"  - {b.name}: {b.reason}" for b in tried)
    raise BackendUnavailableError(
        f"no usable container engine:\n{lines}\nStart the Docker daemon, or install buildah or "
        "podman (offline: see 'Offline image build' in docs/deployment.md), or pass "
        "--dockerfile-only DIR to write the Dockerfile and build context without building.")


# --- the serving image ------------------------------------------------------------------------

def _bento_dir(source: str, gpu: bool) -> Path:
    """The folder of the bento to containerize, building one first from an artifact folder.

    From an artifact, the bento packs the variant ``Manifest.pick`` serves on the image's
    device: the manifest's default variant, or for the GPU image the fused fp32 one.
    """
    import bentoml

    if (Path(source) / MANIFEST).is_file():
        from deploykit.config import BuildConfig
        from deploykit.serve import build  # the serving area's `deploykit build`

        source = build.run(BuildConfig(artifact=source), device="cuda" if gpu else "cpu")
        log.info("built bento %s", source)
    elif Path(source).exists():
        raise BadInputError(f"{source} is neither a bento tag nor an artifact folder "
                            "(no manifest.json); pass a folder written by 'deploykit export'")
    try:
        return Path(bentoml.bentos.get(source).path)
    except (bentoml.exceptions.BentoMLException, ValueError):
        raise BadInputError(f"no bento '{source}' in the BentoML store; build one with "
                            "'deploykit build ARTIFACT' or pass the artifact folder") from None


def packed_artifact(bento_dir: Path) -> Path:
    """The folder of the artifact a deploykit bento packs (under ``src/``).

    Raises:
        BadInputError: If the bento packs no artifact (it is not a deploykit bento).
    """
    found = sorted((bento_dir / "src").glob(f"**/{MANIFEST}"))
    if not found:
        raise BadInputError(f"the bento at {bento_dir} packs no artifact (no manifest.json); "
                            "build it with 'deploykit build ARTIFACT'")
    return found[0].parent


def packed_manifest(bento_dir: Path) -> Manifest:
    """The manifest of the artifact a deploykit bento packs.

    Raises:
        BadInputError: If the bento packs no artifact (it is not a deploykit bento).
    """
    return Manifest.read(packed_artifact(bento_dir))


def _requirement_name(line: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _distro_install_commands() -> set[str]:
    from bentoml._internal.container.frontend.dockerfile import CONTAINER_METADATA

    return {meta["default_install_command"] for meta in CONTAINER_METADATA.values()}


def _check_requirements(bento_dir: Path) -> None:
    python_env = bento_dir / "env" / "python"
    names = set(requirements_of(bento_dir))
    names |= {_requirement_name(w.name.split("-")[0]) for w in python_env.glob("wheels/*.whl")}
    heavy = sorted(names & set(FORBIDDEN))
    if heavy:
        raise BadInputError(f"the bento's Python requirements include {', '.join(heavy)}; a "
                            "serving image must not carry training libraries (rebuild it with "
                            "'deploykit build')")


def retarget(info: dict[str, Any], bento_dir: Path, *, base_image: str, gpu: bool) -> dict[str, Any]:
    """Apply deploykit's container knobs to a bento's ``bento.yaml`` (as a dict).

    Both bento layouts are handled: BentoML >= 1.2's ``image`` section (bento v2, what
    ``deploykit build`` makes), and the ``docker`` section of the legacy layout BentoML falls
    back to for older bentos (e.g. ones that packed ``python.wheels``). With
    ``docker.base_image`` set, BentoML renders its plain ``base.j2`` template, which installs
    no Debian packages at all (so no compiler and no git). The v2 layout also gets
    ``slim.py`` as its last build step; a legacy bento is not slimmed.

    Args:
        info: The parsed bento.yaml.
        bento_dir: The (private copy of the) bento folder; slim.py (v2) or a GPU setup script
            (legacy) is written there.
        base_image: The image to build FROM.
        gpu: Swap onnxruntime for onnxruntime-gpu and select the CUDA settings.

    Returns:
        The modified dict.

    Raises:
        BadInputError: If the bento requires torch & co., or needs Debian packages.
    """
    _check_requirements(bento_dir)
    # The bento's requirements include onnxruntime (CPU); both wheels provide the same
    # `onnxruntime` module, so the CPU one is removed before the GPU one is installed.
    gpu_command = f"uv pip uninstall onnxruntime && uv pip install '{GPU_RUNTIME}'"
    gpu_env = {}
    if gpu:
        gpu_env = {"DEPLOYKIT_VARIANT": packed_manifest(bento_dir).pick(None, "cuda").name,
                   "DEPLOYKIT_PROVIDERS": GPU_PROVIDERS}
    image, docker = info.get("image"), info.get("docker")
    if image:
        image["base_image"] = base_image
        defaults = _distro_install_commands()
        image["commands"] = [c for c in image.get("commands", []) if c not in defaults]
        # The bento's env/docker is copied in before any command runs; slim.py runs last,
        # after the GPU swap (which needs uv).
        (bento_dir / "env" / "docker").mkdir(parents=True, exist_ok=True)
        shutil.copy(SLIM_SCRIPT, bento_dir / "env" / "docker" / SLIM_SCRIPT.name)
        image["post_commands"] = [*image.get("post_commands", []), *([gpu_command] if gpu else []),
                                  f'"$VIRTUAL_ENV/bin/python" env/docker/{SLIM_SCRIPT.name}']
        if gpu:
            envs = [e for e in info.get("envs", []) if e["name"] not in gpu_env]
            info["envs"] = envs + [{"name": k, "value": v, "stage": "all"}
                                   for k, v in gpu_env.items()]
    elif docker is not None:
        if docker.get("system_packages") or docker.get("cuda_version") or docker.get("setup_script"):
            raise BadInputError("this bento asks for Debian packages, CUDA or a setup script, "
                                "which the lean image leaves out; rebuild it with 'deploykit build'")
        docker["base_image"] = base_image
        docker["distro"] = None  # ignored with a base image (BentoML warns if set)
        if gpu:
            docker["env"] = {**(docker.get("env") or {}), **gpu_env}
            # BentoML runs env/docker/setup_script as root after the Python packages.
            script = bento_dir / "env" / "docker" / "setup_script"
            script.write_text(f"#!/bin/sh\nset -eu\n{gpu_command}\n")
            script.chmod(0o755)
            docker["setup_script"] = "env/docker/setup_script"
    else:
        raise BadInputError("bento.yaml has neither an 'image' nor a 'docker' section; "
                            "rebuild the bento with 'deploykit build'")
    return info


@contextlib.contextmanager
def containerfile(bento_dir: Path, *, base_image: str, gpu: bool,
                  enable_buildkit: bool) -> Iterator[tuple[Path, Path]]:
    """BentoML's Dockerfile and build context for a retargeted copy of a bento, with
    ``IMAGE_ENVS`` set at its end.

    Yields:
        ``(context folder, Dockerfile)``, both removed on exit.
    """
    from bentoml._internal.bento.bento import Bento
    from bentoml._internal.container import construct_containerfile

    with tempfile.TemporaryDirectory(prefix="deploykit-bento-") as tmp:
        copy = Path(tmp) / "bento"
        shutil.copytree(bento_dir, copy, symlinks=True)
        info = yaml.safe_load((copy / "bento.yaml").read_text())
        info = retarget(info, copy, base_image=base_image, gpu=gpu)
        (copy / "bento.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        bento = Bento.from_path(str(copy))
        with construct_containerfile(bento, enable_buildkit=enable_buildkit,
                                     add_header=True) as (context, dockerfile):
            path = Path(context) / dockerfile
            with path.open("a") as fh:
                fh.write("\n# deploykit: the image writes nothing outside /tmp (docs/deployment.md)\n"
                         + "".join(f"ENV {k}={v}\n" for k, v in IMAGE_ENVS.items()))
            yield Path(context), Path(dockerfile)


def requirements_of(context: Path) -> list[str]:
    """The Python requirement names the image installs (from the build context)."""
    path = context / "env" / "python" / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [_requirement_name(l) for l in lines if l.strip() and not l.lstrip().startswith(("#", "-"))]


def image_size(backend: str, tag: str) -> int | None:
    """The built image's size in bytes as the engine reports it (None if it cannot say)."""
    binary = shutil.which(backend)
    cmd = {"docker": ["image", "inspect", "--format", "{{.Size}}", tag],
           "podman": ["image", "inspect", "--format", "{{.Size}}", tag],
           "buildah": ["images", "--format", "{{.Size}}", "--noheading", tag]}[backend]
    proc = subprocess.run([binary, *cmd], capture_output=True, text=True, timeout=60)
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        return None
    if out.isdigit():
        return int(out)
    match = re.match(r"^([0-9.]+)\s*([KMG]?B)$", out)  # buildah prints e.g. "412 MB"
    if not match:
        return None
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _build(backend: str, dockerfile: Path, context: Path, tag: str,
           build_args: dict[str, str] | None = None, **options: Any) -> None:
    """Build with BentoML's OCI builder for ``backend`` (docker, buildah or podman)."""
    from bentoml.container import get_backend
    from bentoml.exceptions import BentoMLException

    try:
        get_backend(backend).build(file=str(dockerfile), context_path=str(context), tag=(tag,),
                                   build_arg=build_args or None, **options)
    except BentoMLException as exc:
        raise DeployKitError(f"{backend} failed to build {tag}: {exc}") from None


def run(cfg: ContainerizeConfig) -> str:
    """Build the serving image of a bento or artifact, or the training image.

    Checks come first and cost nothing: the tag, a usable engine, the base image, the artifact's
    files. The image is built under a staging name, pushed to an OCI archive to learn its
    digest (kept at ``--archive``, else discarded), and only then tagged; the staging name is
    removed whatever happens.

    Args:
        cfg: The options (``--dockerfile-only`` writes the Dockerfile and context instead).

    Returns:
        The image pinned to its digest (``NAME@sha256:...``; the tag with docker, whose digest
        is known only once pushed to a registry), or the folder written with ``--dockerfile-only``.

    Raises:
        BadInputError: On an invalid tag, an unknown bento, a non-artifact folder, a bento that
            needs torch, or a base image that is neither local nor pullable.
        BackendUnavailableError: When no container engine can build here.
        IntegrityError: When an artifact file does not match its manifest (exit code 4).
        DeployKitError: When the engine's build or push fails.
    """
    if cfg.train:
        return _run_train(cfg)
    if cfg.ray:
        return _run_ray(cfg)
    if cfg.tag:
        engines.check_tag(cfg.tag)
    backend = None if cfg.dockerfile_only else pick_backend(cfg.backend)  # fail before building
    base_image = cfg.base_image or DEFAULT_BASE_IMAGE
    if backend:
        engines.ensure_base_image(backend, base_image)
    bento_dir = _bento_dir(cfg.source, cfg.gpu)
    # What the image will serve, checked file by file (a bento copied between machines, or
    # edited in the store, can differ from what deploykit build packed).
    Manifest.verify(packed_artifact(bento_dir))
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    tag = engines.check_tag(cfg.tag or f"{info['name']}:{info['version']}{'-gpu' if cfg.gpu else ''}")
    if cfg.dockerfile_only:
        from deploykit.files import atomic_folder

        with containerfile(bento_dir, base_image=base_image, gpu=cfg.gpu,
                           enable_buildkit=False) as (context, _), \
                atomic_folder(cfg.dockerfile_only) as tmp:
            shutil.copytree(context, tmp, dirs_exist_ok=True, symlinks=True)
            shutil.copy(tmp / "env" / "docker" / "Dockerfile", tmp / "Dockerfile")
        log.info("wrote the Dockerfile and build context of %s to %s (build with: "
                 "docker build -t %s %s)", tag, cfg.dockerfile_only, tag, cfg.dockerfile_only)
        return cfg.dockerfile_only
    from bentoml._internal.container import enable_buildkit

    staging = f"{STAGING}:{secrets.token_hex(8)}"
    try:
        with containerfile(bento_dir, base_image=base_image, gpu=cfg.gpu,
                           enable_buildkit=enable_buildkit(backend=backend)) as (context, dockerfile):
            log.info("building %s FROM %s with %s", tag, base_image, backend)
            if not BUILD_OPTIONS[backend]:
                log.warning("%s cannot squash layers here: the files slim.py removes stay in the "
                            "layers below (build with buildah or podman for the small image)", backend)
            _build(backend, dockerfile, context, staging, **BUILD_OPTIONS[backend])
        pinned = _publish(backend, staging, tag, cfg.archive)
    finally:
        engines.untag(backend, staging)
    _report(backend, tag, pinned)
    return pinned


def _publish(backend: str, staging: str, tag: str, archive: str | None) -> str:
    """Learn the staged image's digest (pushing it to an OCI archive), then tag it.

    Returns:
        ``NAME@sha256:...``, or the tag with docker.
    """
    if backend == "docker":
        if archive:
            engines.save_archive(staging, Path(archive))
        engines.tag(backend, staging, tag)
        log.info("docker reports an image's digest only once it is pushed to a registry: "
                 "docker push %s", tag)
        return tag
    with tempfile.TemporaryDirectory(prefix="deploykit-image-") as tmp:
        path = Path(archive) if archive else Path(tmp) / "image.oci.tar"
        digest = engines.push_archive(backend, staging, path, tag)
    engines.tag(backend, staging, tag)
    if archive:  # the digest is recorded once the image is complete and tagged
        record = Path(archive).with_name(Path(archive).name + ".digest")
        record.write_text(digest + "\n")
        log.info("wrote %s (podman load -i %s) and its digest to %s", archive, archive, record)
    return f"{engines.repository(tag)}@{digest}"


def _run_train(cfg: ContainerizeConfig) -> str:
    root = Path(__file__).resolve().parents[2]
    dockerfile = root / TRAIN_DOCKERFILE
    if not dockerfile.is_file():
        raise BadInputError(f"{dockerfile} not found: --train builds from a deploykit checkout "
                            "(run it from the repository)")
    tag = cfg.tag or f"deploykit-train:{__version__}"
    if cfg.dockerfile_only:
        out = Path(cfg.dockerfile_only)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(dockerfile, out / "Dockerfile")
        log.info("wrote %s (build from the repository root: docker build -f %s -t %s %s)",
                 out / "Dockerfile", dockerfile, tag, root)
        return str(out)
    backend = pick_backend(cfg.backend)
    args = {"BASE_IMAGE": cfg.base_image} if cfg.base_image else None
    log.info("building the training image %s from %s with %s", tag, dockerfile, backend)
    _build(backend, dockerfile, root, tag, args)
    _report(backend, tag)
    return tag


def _run_ray(cfg: ContainerizeConfig) -> str:
    """The batch-scoring image: k8s/batch/Dockerfile over a context of deploykit's source and the
    verified artifact (``deploykit k8s --batch-job`` runs it as a KubeRay RayJob)."""
    from deploykit.files import atomic_folder
    from deploykit.scale import RAY_VERSION

    root = Path(__file__).resolve().parents[2]
    dockerfile = root / RAY_DOCKERFILE
    if not dockerfile.is_file():
        raise BadInputError(f"{dockerfile} not found: --ray builds from a deploykit checkout (run it from the "
                            "repository)")
    if not (Path(cfg.source) / MANIFEST).is_file():
        raise BadInputError(f"{cfg.source} is not an artifact folder (no manifest.json); --ray packs the folder "
                            "written by 'deploykit export'")
    manifest = Manifest.verify(cfg.source)  # what the image will score, file by file
    tag = engines.check_tag(cfg.tag or f"deploykit-ray-{manifest.name.lower()}:{__version__}")
    backend = None if cfg.dockerfile_only else pick_backend(cfg.backend)
    with tempfile.TemporaryDirectory(prefix="deploykit-ray-") as tmp:
        context = Path(tmp) / "context"
        context.mkdir()
        shutil.copy(dockerfile, context / "Dockerfile")
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, context / name)
        shutil.copytree(root / "deploykit", context / "deploykit", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(cfg.source, context / "artifact",
                        ignore=lambda folder, names: [n for n in names if Path(folder) == Path(cfg.source)
                                                      and n not in manifest.files and n != MANIFEST])
        if cfg.dockerfile_only:
            with atomic_folder(cfg.dockerfile_only) as out:
                shutil.copytree(context, out, dirs_exist_ok=True)
            log.info("wrote the batch-scoring image's Dockerfile and context to %s (build with: docker build -t %s "
                     "%s)", cfg.dockerfile_only, tag, cfg.dockerfile_only)
            return cfg.dockerfile_only
        args = {"RAY_VERSION": RAY_VERSION, **({"BASE_IMAGE": cfg.base_image} if cfg.base_image else {})}
        log.info("building the batch-scoring image %s (Ray %s, artifact %s) with %s", tag, RAY_VERSION,
                 manifest.name, backend)
        _build(backend, context / "Dockerfile", context, tag, args)
    _report(backend, tag)
    return tag


def _report(backend: str, tag: str, pinned: str | None = None) -> None:
    size = image_size(backend, tag)
    log.info("built %s%s%s", tag, f" ({size / 1e6:.0f} MB)" if size else "",
             f", pinned: {pinned}" if pinned and pinned != tag else "")

"""What ``deploykit containerize`` asks of a container engine besides the build itself.

Checking an image reference, finding or pulling the base image, tagging and untagging, and
pushing the built image to an OCI archive to learn its digest. Every call runs the engine's own
command line (docker, buildah or podman) and turns a failure into an error that names the
image and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploykit.errors import BadInputError, DeployKitError

log = logging.getLogger(__name__)

# The reference grammar of the distribution project (github.com/distribution/reference), which
# docker, buildah, podman and registries share: [domain[:port]/]path[:tag][@digest].
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
TAG_RE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?", re.ASCII)
NAME_MAX = 255


def check_tag(tag: str) -> str:
    """Check an image tag to build (``[registry[:port]/]path[:tag]``, no digest).

    Returns:
        ``tag``, unchanged.

    Raises:
        BadInputError: Saying which rule the tag breaks and giving a valid example.
    """
    why = None
    if "@" in tag:
        why = "a digest is what a build produces, it cannot be asked for"
    elif TAG_RE.fullmatch(tag) is None:
        why = ("names are lowercase letters, digits and separators (. _ __ -) in /-separated "
               "parts, optionally after a registry host[:port]/, then an optional :TAG of at "
               "most 128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')")
    elif len(TAG_RE.fullmatch(tag).group("name")) > NAME_MAX:
        why = f"the name is longer than {NAME_MAX} characters"
    if why:
        raise BadInputError(f"--tag {tag!r} is not a valid image reference: {why}; e.g. "
                            "--tag registry.example.com/team/sentiment:0.1.0")
    return tag


def repository(tag: str) -> str:
    """The name part of a tag (``registry:5000/a/b:1`` -> ``registry:5000/a/b``)."""
    match = TAG_RE.fullmatch(tag)
    return match.group("name") if match else tag


def _engine(backend: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    binary = shutil.which(backend)
    if binary is None:
        raise BadInputError(f"'{backend}' is not on PATH")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def image_exists(backend: str, ref: str) -> bool:
    """Whether ``ref`` is in the engine's local image storage."""
    args = {"docker": ("image", "inspect", ref), "podman": ("image", "exists", ref),
            "buildah": ("inspect", "--type", "image", ref)}[backend]
    return _engine(backend, *args, timeout=60).returncode == 0


def ensure_base_image(backend: str, ref: str) -> None:
    """Make sure the image to build FROM is there, pulling it when it is not local.

    Checked before anything is built, so a missing base costs nothing and leaves nothing.

    Raises:
        BadInputError: If the image is neither local nor pullable, with the engine's reason.
    """
    if image_exists(backend, ref):
        return
    log.info("base image %s is not in %s's local storage; pulling it", ref, backend)
    proc = _engine(backend, "pull", ref)
    if proc.returncode != 0:
        raise BadInputError(
            f"the base image {ref!r} is not in {backend}'s local storage and pulling it failed "
            f"({_last_line(proc)}); build the offline base with 'k8s/offline/bookworm-python.sh "
            f"{ref}' (docs/deployment.md), or pass --base-image with an image '{backend} images' "
            "lists")


def tag(backend: str, image: str, new: str) -> None:
    """Give ``image`` the name ``new``.

    Raises:
        DeployKitError: If the engine refuses.
    """
    proc = _engine(backend, "tag", image, new, timeout=60)
    if proc.returncode != 0:
        raise DeployKitError(f"{backend} could not tag {image} as {new}: {_last_line(proc)}")


def untag(backend: str, name: str) -> None:
    """Remove the name ``name``; the image goes too when no other name holds it.

    Never raises: it runs while another error may be on its way to the user.
    """
    try:
        proc = _engine(backend, "rmi", name, timeout=120)
        if proc.returncode != 0 and image_exists(backend, name):
            log.warning("could not remove the image name %s: %s", name, _last_line(proc))
    except (OSError, subprocess.SubprocessError, BadInputError) as exc:
        log.warning("could not remove the image name %s: %s", name, exc)


def push_archive(backend: str, image: str, archive: Path, name: str) -> str:
    """Write ``image`` to ``archive`` as an OCI archive named ``name``; return its digest.

    The digest is the one ``buildah push --digestfile`` (or podman's) reports: the sha256 of the
    image manifest as pushed (gzip-compressed layers, OCI format), which is what a registry
    reports for the same push, unlike the local image ID (the config's digest). The archive is
    written next to its final path and renamed, so a failed push leaves no partial file.

    Raises:
        DeployKitError: If the push fails.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    os.unlink(tmp)  # the engine creates the file itself
    digestfile = Path(tmp + ".digest")
    try:
        proc = _engine(backend, "push", "--quiet", "--digestfile", str(digestfile), image,
                       f"oci-archive:{tmp}:{name}", timeout=1800)
        if proc.returncode != 0:
            raise DeployKitError(f"{backend} push of {image} to oci-archive:{archive} failed: "
                                 f"{_last_line(proc)}")
        digest = digestfile.read_text().strip()
        os.replace(tmp, archive)
    finally:
        for path in (Path(tmp), digestfile):
            path.unlink(missing_ok=True)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise DeployKitError(f"{backend} push wrote an unexpected digest {digest!r}")
    return digest


def save_archive(image: str, archive: Path) -> None:
    """``docker save`` (docker cannot push to an OCI archive); written aside, then renamed.

    Raises:
        DeployKitError: If docker fails.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp")
    proc = _engine("docker", "save", "-o", str(tmp), image, timeout=1800)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DeployKitError(f"docker save of {image} failed: {_last_line(proc)}")
    os.replace(tmp, archive)

"""Small file helpers every stage shares: an atomic folder swap and a file's sha256.

Standard library only, so the torch-free serving side and the training side import the same
functions (a folder written by ``train``, ``export``, ``triton`` or ``k8s`` is swapped in the same
way, and the sha256 that ``export`` records is the one the runtime checks).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (what a manifest's ``files`` records).

    Args:
        path: The file.

    Returns:
        64 lowercase hex digits.

    Raises:
        OSError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success swap it in by renames.

    If the body raises, the temporary folder is removed and ``final`` is untouched. A kill at
    any moment leaves either the old folder, or the new one, or (between the two renames) the
    old one under ``<final>.old``, which ``recover_folder`` puts back; never a half-written
    ``final``.

    Args:
        final: The folder to (re)place.

    Yields:
        The temporary folder to write into.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(final: str | Path) -> None:
    """Undo a swap interrupted between its two renames, and drop stale temporary folders.

    Args:
        final: The folder ``atomic_folder`` was writing.
    """
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file under a temporary name, then rename it (never half-written).

    Args:
        path: The file to write.
        text: Its content (UTF-8).

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path

"""Optional dependencies: what each command needs, and help instead of a traceback.

The extras are defined once, in pyproject.toml. This module reads them back from the installed
package's metadata, so a message can never name an extra that does not hold the missing
package. Two checks use it: ``require`` before a command whose every run needs an extra
(``deploykit train`` needs ``[train]``), and ``extra_for_module`` for an import that only some
runs make (``deploykit k8s`` needs kubernetes-validate only where kubectl is there to build the
overlay it validates).
"""

from __future__ import annotations

import importlib.metadata as md
import re

from deploykit.errors import BadInputError

DIST = "deploykit"
# Import names that differ from their distribution's name (PEP 503-normalized).
_DISTRIBUTION_OF = {"sklearn": "scikit-learn", "yaml": "pyyaml", "google": "protobuf",
                    "optimum": "optimum-onnx"}


class MissingExtraError(BadInputError):
    """A command needs an optional dependency that is not installed; names the extra (exit 2)."""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str, extra: str | None) -> list:
    """The requirements ``dist`` declares for ``extra`` (None: its base requirements)."""
    from packaging.requirements import Requirement

    found = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        marker = str(req.marker) if req.marker else ""
        if "extra" not in marker:
            wanted = extra is None and (req.marker is None or req.marker.evaluate({"extra": ""}))
        else:
            wanted = extra is not None and req.marker.evaluate({"extra": extra})
        if wanted:
            found.append(req)
    return found


def _closure(dist: str, extras: list[str | None], seen: set[tuple[str, str | None]]) -> dict[str, str]:
    """Every distribution ``dist[extras]`` needs, as {normalized name: the requirement that
    brought it in}, following self-references (``deploykit[train]``) and the extras of
    installed dependencies (``tritonclient[http]`` brings in geventhttpclient)."""
    needed: dict[str, str] = {}
    for extra in extras:
        if (dist, extra) in seen:
            continue
        seen.add((dist, extra))
        try:
            reqs = _requirements(dist, extra)
        except md.PackageNotFoundError:
            continue
        for req in reqs:
            name = _normalize(req.name)
            if name != _normalize(dist):
                shown = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
                needed.setdefault(name, shown + str(req.specifier))
            if req.extras:
                needed.update({k: v for k, v in _closure(req.name, sorted(req.extras), seen).items()
                               if k not in needed})
    return needed


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def declared_extras() -> list[str]:
    """The extras deploykit's metadata declares, in pyproject.toml's order."""
    try:
        return md.metadata(DIST).get_all("Provides-Extra") or []
    except md.PackageNotFoundError:
        return []


def missing(extra: str) -> list[str]:
    """The requirements of ``deploykit[extra]`` that are not installed (presence only: versions
    are pip's business)."""
    return [req for name, req in _closure(DIST, [extra], set()).items() if not _installed(name)]


def install_hint(extra: str) -> str:
    """How to install an extra, from a package or from a checkout."""
    return (f"pip install 'deploykit[{extra}]' (from a checkout: pip install -e '.[{extra}]'; "
            "install torch==2.13.0 first on a CPU machine)" if extra in ("train", "demo", "dev")
            else f"pip install 'deploykit[{extra}]' (from a checkout: pip install -e '.[{extra}]')")


def require(command: str, extra: str) -> None:
    """Fail early, naming the extra, when ``deploykit COMMAND`` cannot run without it.

    Raises:
        MissingExtraError: If a requirement of the extra is not installed.
    """
    if extra not in declared_extras():  # not installed as a package: nothing to check against
        return
    absent = missing(extra)
    if absent:
        shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
        raise MissingExtraError(f"deploykit {command} needs the optional dependencies of "
                                f"deploykit[{extra}], and {shown} "
                                f"{'is' if len(absent) == 1 else 'are'} not installed; install "
                                f"them with: {install_hint(extra)}")


def extra_for_module(module: str | None) -> str | None:
    """The smallest extra that installs the top-level ``module``.

    Returns:
        The extra's name, or None when no extra provides it (then the import failing is a bug).
    """
    if not module:
        return None
    top = module.split(".")[0]
    name = _normalize(_DISTRIBUTION_OF.get(top, top))
    closures = {extra: _closure(DIST, [extra], set()) for extra in declared_extras()}
    holding = [extra for extra, needed in closures.items() if name in needed]
    return min(holding, key=lambda extra: len(closures[extra]), default=None)


def missing_module_error(command: str, exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The helpful error for an import that failed inside a command, or None if no extra has it."""
    extra = extra_for_module(exc.name)
    if extra is None:
        return None
    return MissingExtraError(f"deploykit {command} needs the Python module '{exc.name}', which "
                             f"deploykit[{extra}] installs; install it with: {install_hint(extra)}")

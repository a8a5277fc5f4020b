"""Service settings from DEPLOYKIT_* environment variables (what containers and Kubernetes set).

Every field of ``ServiceConfig`` is the variable ``DEPLOYKIT_<FIELD>`` (``max_batch_size`` ->
``DEPLOYKIT_MAX_BATCH_SIZE``), plus ``DEPLOYKIT_ARTIFACT`` for the artifact folder, so the
``deploykit serve`` flags, the YAML keys and the environment can never drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from deploykit.config import ServiceConfig, from_dict
from deploykit.errors import BadInputError

PREFIX = "DEPLOYKIT_"
ARTIFACT_ENV = PREFIX + "ARTIFACT"


def env_name(field: str) -> str:
    """The environment variable of a ``ServiceConfig`` field."""
    return PREFIX + field.upper()


def artifact_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The artifact folder named by ``DEPLOYKIT_ARTIFACT``.

    Raises:
        BadInputError: If it is unset.
    """
    environ = os.environ if environ is None else environ
    artifact = environ.get(ARTIFACT_ENV, "")
    if not artifact:
        raise BadInputError(f"{ARTIFACT_ENV} is not set; set it to the artifact folder written by "
                            "'deploykit export' (or start the service with 'deploykit serve ARTIFACT')")
    return artifact


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``ServiceConfig`` fields set through ``DEPLOYKIT_*`` variables, as raw strings."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(ServiceConfig):
        raw = environ.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = raw
    return values


def from_env(environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read the service settings from the ``DEPLOYKIT_*`` environment variables.

    Args:
        environ: The environment (default: ``os.environ``).

    Returns:
        The settings; unset variables keep ``ServiceConfig``'s defaults.

    Raises:
        BadInputError: If a variable has an invalid value (the message names it).
    """
    values = env_values(environ)
    try:
        return from_dict(ServiceConfig, values, source="DEPLOYKIT_* environment variables")
    except BadInputError as exc:
        raise BadInputError(f"{exc} (set through the DEPLOYKIT_* environment variables)") from None


def to_env(artifact: str, cfg: ServiceConfig) -> dict[str, str]:
    """The environment variables that make the service read ``cfg`` (unset fields omitted)."""
    env = {ARTIFACT_ENV: str(artifact)}
    for f in dataclasses.fields(ServiceConfig):
        value = getattr(cfg, f.name)
        if value is not None:
            env[env_name(f.name)] = str(value)
    return env

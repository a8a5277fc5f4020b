"""Typed errors shared by every stage; each carries the process exit code docs/architecture.md fixes.

Exit codes: 0 success, 1 unexpected error, 2 bad usage or bad input, 3 parity failure,
4 integrity failure (sha256 mismatch, tampered or missing file).
"""

from __future__ import annotations


class DeployKitError(Exception):
    """Base class of every error deploykit raises on purpose."""

    exit_code = 1


class BadInputError(DeployKitError):
    """The user gave a wrong option, file, column or value; the message says what to do."""

    exit_code = 2


class ConfigError(BadInputError):
    """An invalid configuration value or an unknown configuration key."""


class ParityError(DeployKitError):
    """An exported variant disagrees with the PyTorch reference beyond its tolerance."""

    exit_code = 3


class IntegrityError(DeployKitError):
    """A file is missing, truncated or does not match the sha256 recorded for it."""

    exit_code = 4

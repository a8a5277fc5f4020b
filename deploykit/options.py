"""Option fields and their checks: what the stage configs and the tasks' own options are made of.

A leaf module (it imports only ``deploykit.errors``): ``deploykit.config`` builds one dataclass per
stage from its own fields plus the options each registered task declares in its folder's
``options.py``, and both write their fields with ``opt`` and their checks with ``require``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from deploykit.errors import ConfigError


def opt(default: Any, help: str, *, choices: tuple | None = None, positional: bool = False) -> Any:
    """A dataclass field that carries its command-line help (``deploykit.cli`` builds the flag).

    Args:
        default: The default value (a list or dict is copied per instance).
        help: The flag's help text.
        choices: The values the flag accepts, if limited.
        positional: Whether the command takes it as a positional argument.
    """
    meta = {"help": help, "choices": choices, "positional": positional}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag(option: str) -> str:
    """The command-line flag of an option (``max_length`` -> ``--max-length``)."""
    return "--" + option.replace("_", "-")


def require(condition: bool, option: str, message: str) -> None:
    """Raise ``ConfigError`` naming the option's flag unless ``condition`` holds.

    Raises:
        ConfigError: ``invalid --OPTION: MESSAGE``.
    """
    if not condition:
        raise ConfigError(f"invalid {flag(option)}: {message}")


def int_list(value: str) -> list[int]:
    """``"1,8,32"`` as ``[1, 8, 32]`` (empty items ignored); ValueError on anything else."""
    return [int(s) for s in str(value).split(",") if s.strip()]


def require_int_list(value: str, option: str, *, allow_empty: bool = False) -> None:
    """Refuse ``value`` unless it is a comma-separated list of positive integers.

    Raises:
        ConfigError: Naming the option's flag.
    """
    try:
        items = int_list(value)
    except ValueError:
        items = None
    require(items is not None and (allow_empty or bool(items)) and all(i > 0 for i in items),
            option, f"{value!r} is not a comma-separated list of positive integers, e.g. 1,8,32")

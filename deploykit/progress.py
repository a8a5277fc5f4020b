"""Progress that suits where stderr goes: bars on a terminal, plain log lines anywhere else.

A tqdm bar redraws itself with a carriage return per update: on a terminal that is one line
that moves, but in a pod's log, a CI log or a file every frame is kept (one ``deploykit export``
used to write thousands of ``rows alone: 12%|...`` frames). ``bar`` returns tqdm's own bar when
stderr is a terminal; otherwise a tqdm whose only output is a log line (logger
``deploykit.progress``, INFO) when it starts, at each further tenth of its total (or every
30 s when the total is unknown or a tenth takes longer), and when it ends. It writes nothing
else, not even a carriage return.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("deploykit.progress")

EVERY_S = 30.0  # the longest gap between two lines off a terminal


class _Discard(io.TextIOBase):
    """Where a line-mode bar's own frames go: nowhere."""

    def write(self, text: str) -> int:
        return len(text)


class LineProgress(tqdm):
    """A tqdm that logs one plain line at its start, each tenth, every ``EVERY_S`` s and its end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tenth, self._logged_at, self._logged_n, self._ended = -1, 0.0, -1, False
        kwargs["file"] = _Discard()
        kwargs.setdefault("mininterval", 0.5)  # how often tqdm asks; the line rule decides
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        d = self.format_dict
        elapsed = self.format_interval(d["elapsed"])
        rate = f"{self.n / d['elapsed']:.1f} {d['unit']}/s" if d["elapsed"] > 0 and self.n else ""
        if self.total:
            return (f"{self.desc or 'progress'}: {self.n}/{self.total} {d['unit']} "
                    f"({100 * self.n / self.total:.0f}%), {elapsed}{', ' + rate if rate else ''}")
        return f"{self.desc or 'progress'}: {self.n} {d['unit']}, {elapsed}{', ' + rate if rate else ''}"

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.disable or self._ended or msg == "":  # msg "" is tqdm clearing its line at close
            return True
        now = time.monotonic()
        tenth = int(10 * self.n / self.total) if self.total else None
        if self._logged_n < 0 or (tenth is not None and tenth > self._tenth) or (
                now - self._logged_at >= EVERY_S and self.n != self._logged_n):
            log.info("%s", self._line())
            self._tenth, self._logged_at, self._logged_n = tenth if tenth is not None else -1, now, self.n
        return True

    def close(self) -> None:
        if not self.disable and not self._ended and getattr(self, "n", None) is not None:
            if self.n != self._logged_n:
                log.info("%s", self._line())
            self._ended = True
        super().close()


def on_terminal() -> bool:
    """Whether stderr is a terminal (where a redrawn bar is one moving line)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def bar(*args: Any, **kwargs: Any) -> tqdm:
    """A progress bar: tqdm's on a terminal, else ``LineProgress`` (plain log lines).

    Args:
        *args, **kwargs: tqdm's (an iterable, ``total``, ``desc``, ``unit``, ``leave``,
            ``disable``, ``initial``, ...).

    Returns:
        The bar; use it as tqdm (iterate, ``update``, ``set_postfix``, ``close``, ``with``).
    """
    return tqdm(*args, **kwargs) if on_terminal() else LineProgress(*args, **kwargs)

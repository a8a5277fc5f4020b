"""The suite's two workers (pytest-xdist, ``-n 2``) and the tests that need the machine alone.

Most of the suite waits as much as it computes (servers and tritonserver starting, Ray, pip,
podman), so two workers finish it sooner on 2 cores. A few tests measure the machine, though: the
overload test sends twice the capacity it has just measured, the fair-admission test times
steps, the Prometheus test reads queue waits. Those are marked ``@pytest.mark.quiet`` and run
while no other test runs: a readers-writer lock shared by the workers (``fcntl.flock`` on two
files in one folder). Every other test holds the lock shared from its setup to its teardown; a
quiet test waits for the turnstile, which stops new tests from starting, then for the room to
empty, and holds both until it ends. With ``-n 0`` (one process, no workers) nothing is locked.

Hand-written because pytest-xdist schedules tests but has no exclusive ones (its groups keep
tests on one worker, beside the other worker's).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class QuietLock:
    """The workers' lock: ``shared()`` for an ordinary test, ``alone()`` for a quiet one."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.turnstile = os.open(folder / "turnstile", os.O_RDWR | os.O_CREAT, 0o600)
        self.room = os.open(folder / "room", os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def shared(self) -> Iterator[None]:
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)  # waits while a quiet test waits or runs
        fcntl.flock(self.room, fcntl.LOCK_SH)
        fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.room, fcntl.LOCK_UN)

    @contextmanager
    def alone(self) -> Iterator[None]:
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.room, fcntl.LOCK_EX)  # every running test has ended
            try:
                yield
            finally:
                fcntl.flock(self.room, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)

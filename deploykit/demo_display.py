"""The demo's live display: one line per stage with a spinner, a detail and its elapsed time.

On a terminal it is a rich ``Progress`` (rich comes with BentoML) redrawn in place; elsewhere
(a CI log, a test) it prints one plain line when a stage starts and one when it ends, so the
log reads top to bottom. Hand-written on top of rich because neither rich nor tqdm has a
"list of named stages, each with its own clock and outcome" widget.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

log = logging.getLogger(__name__)


class _RunningSpinner(SpinnerColumn):
    """A spinner only for the running stage (rich spins for pending ones too)."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.started and not task.finished else Text(" ")


class StageDisplay:
    """Show named stages as they run.

    Args:
        stages: Every stage name, in order (shown up front as pending on a terminal).
        console: Where to draw (stderr by default, so stdout keeps only the summary).
    """

    def __init__(self, stages: list[str], console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.elapsed: dict[str, float] = {}
        # CPU seconds of this process (all its threads): on a busy shared machine, wall time
        # says little about a quiet one; CPU time / cores is a closer estimate.
        self.cpu: dict[str, float] = {}
        self._tasks: dict[str, int] = {}
        self._progress = Progress(
            _RunningSpinner(), TextColumn("{task.fields[mark]}"),
            TextColumn("[bold]{task.fields[stage]:<9}"), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=self.console, transient=False,
            disable=not self.live, redirect_stdout=False, redirect_stderr=False)
        for name in stages:
            self._tasks[name] = self._progress.add_task("", stage=name, mark="·", start=False, total=1)

    def __enter__(self) -> "StageDisplay":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _line(self, text: str) -> None:
        if not self.live:
            self.console.print(text, highlight=False, soft_wrap=True)

    @contextmanager
    def stage(self, name: str, detail: str = "", poll: Callable[[], str | None] | None = None
              ) -> Iterator[Callable[[str], None]]:
        """Run one stage under the display; yields a function that sets the stage's detail.

        Args:
            name: The stage (one of ``stages``).
            detail: What the stage does, shown while it runs.
            poll: Called about once a second while the stage runs (terminal only); a string it
                returns replaces the detail (e.g. the training step and loss).

        Raises:
            Whatever the stage raises, after marking it failed with its elapsed time.
        """
        task = self._tasks[name]
        self._progress.start_task(task)
        self._progress.update(task, description=detail, mark="▶")
        self._line(f"▶ {name}: {detail}")
        log.info("stage %s: %s", name, detail)
        started, cpu_started = time.monotonic(), time.process_time()
        final = {"detail": detail}

        def set_detail(text: str) -> None:
            final["detail"] = text
            self._progress.update(task, description=text)

        stop = threading.Event()
        poller = None
        if poll is not None and self.live:
            def loop() -> None:
                while not stop.wait(1.0):
                    try:
                        text = poll()
                    except Exception:  # a half-written progress file: try again next second
                        continue
                    if text:
                        self._progress.update(task, description=text)

            poller = threading.Thread(target=loop, daemon=True)
            poller.start()
        try:
            yield set_detail
        except BaseException as exc:
            self.elapsed[name] = time.monotonic() - started
            self.cpu[name] = time.process_time() - cpu_started
            self._progress.update(task, completed=1, mark="[red]✗",
                                  description=f"[red]failed: {str(exc)[:160]}")
            self._progress.stop_task(task)
            self._line(f"✗ {name} failed after {self.elapsed[name]:.1f} s: {exc}")
            raise
        finally:
            stop.set()
            if poller is not None:
                poller.join()
        self.elapsed[name] = time.monotonic() - started
        self.cpu[name] = time.process_time() - cpu_started
        self._progress.update(task, completed=1, mark="[green]✓", description=final["detail"])
        self._line(f"✓ {name} ({self.elapsed[name]:.1f} s): {final['detail']}")
        log.info("stage %s done in %.1f s: %s", name, self.elapsed[name], final["detail"])

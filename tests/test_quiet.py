"""tests/quiet.py: under pytest-xdist a quiet test runs alone, and a waiting one stops new tests."""

from __future__ import annotations

import threading
import time

from quiet import QuietLock


def test_a_quiet_test_waits_for_running_tests_and_holds_back_new_ones(tmp_path):
    ordinary, quiet, late = (QuietLock(tmp_path) for _ in range(3))  # three workers' own descriptors
    events: list[str] = []

    def run_quiet():
        with quiet.alone():
            events.append("quiet starts")
            time.sleep(0.2)
            events.append("quiet ends")

    def run_late():
        with late.shared():
            events.append("late starts")

    with ordinary.shared():
        events.append("ordinary starts")
        waiting = threading.Thread(target=run_quiet)
        waiting.start()
        time.sleep(0.3)  # the quiet test is at the room's door, holding the turnstile
        newcomer = threading.Thread(target=run_late)
        newcomer.start()
        time.sleep(0.3)
        assert events == ["ordinary starts"]  # neither the quiet test nor the newcomer got in
        events.append("ordinary ends")
    waiting.join(10)
    newcomer.join(10)
    assert events == ["ordinary starts", "ordinary ends", "quiet starts", "quiet ends", "late starts"]


def test_ordinary_tests_run_side_by_side(tmp_path):
    first, second = QuietLock(tmp_path), QuietLock(tmp_path)
    with first.shared():
        entered = threading.Event()

        def beside():
            with second.shared():
                entered.set()

        thread = threading.Thread(target=beside)
        thread.start()
        assert entered.wait(10)  # not held back by the first
        thread.join(10)

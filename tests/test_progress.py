"""Progress off a terminal (issue 28): plain log lines, never a carriage-return frame per update;
on a terminal, tqdm's bar as before. Each case runs in its own interpreter whose stderr is a
pipe, or a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import subprocess
import sys

from test_serve import ROOT

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from deploykit.progress import bar
for _ in bar(range(2000), desc="rows alone", unit="row", leave=False, mininterval=0):
    pass
with bar(total=None, desc="stream", unit="row") as b:
    b.update(7)
for _ in bar(range(5), desc="quiet", disable=True):
    pass
print("done", file=sys.stderr)
"""


def test_off_a_terminal_progress_is_a_few_plain_lines():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr and "|" not in done.stderr, done.stderr[:500]
    lines = done.stderr.splitlines()
    rows = [line for line in lines if line.startswith("deploykit.progress: rows alone:")]
    # The start, then each tenth: 0%, 10%, ..., 100%.
    assert [line.split("(")[1].split("%")[0] for line in rows] == [str(10 * i) for i in range(11)], rows
    assert "2000/2000 row (100%)" in rows[-1]
    stream = [line for line in lines if "stream:" in line]
    assert len(stream) == 2 and stream[-1].startswith("deploykit.progress: stream: 7 row"), stream
    assert not any("quiet" in line for line in lines) and lines[-1] == "done"


def test_on_a_terminal_the_bar_is_kept():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm sizes its bar by it
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0, out[-2000:]
    text = out.decode(errors="replace")
    assert "\r" in text and "rows alone:" in text and "|" in text and "deploykit.progress" not in text

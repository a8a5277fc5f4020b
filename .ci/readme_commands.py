"""Print the README's two commands, as CI runs them: one per line.

They are the first two lines of the README's first code block: the install + ``deploykit demo``
line and the install + test-suite line. CI runs the first with ``--quick`` added to
``deploykit demo`` (the full demo takes minutes of training), the second as written. Reading
them from the README means the README and CI cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def commands(readme: str) -> tuple[str, str]:
    """(the demo line with --quick, the test line) from the README's first code block."""
    block = re.search(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S)
    if block is None:
        raise SystemExit("README.md has no code block")
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    if len(lines) < 2:
        raise SystemExit("README.md's first code block needs two lines: the demo and the tests")
    demo, tests = lines[:2]
    if demo.count("deploykit demo") != 1 or "python -m pytest" not in tests:
        raise SystemExit(f"README.md's first code block should run 'deploykit demo', then "
                         f"'python -m pytest'; it has:\n{demo}\n{tests}")
    return demo.replace("deploykit demo", "deploykit demo --quick"), tests


if __name__ == "__main__":
    print("\n".join(commands(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md").read_text())))

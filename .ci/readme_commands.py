"""Print the README's two commands, as CI runs them: one per line.

They are the first two lines of the README's first code block: the install + ``deploykit demo``
line and the install + test-suite line. CI runs the first with ``--quick`` added to
``deploykit demo`` (the full demo takes minutes of training), the second as written. Reading
them from the README means the README and CI cannot drift apart.

The README's container commands (the first code block under the "### Container image" heading)
are read the same way, by ``container_script``: the image tests (tests/test_images.py, part of
the suite CI runs) run them as written, on the demo's artifact and on a generation artifact,
with only the first line's values changed (``--container`` prints them as CI runs them).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

CONTAINER_HEADING = "### Container image"
# The first line of the container block sets exactly these shell variables; the rest uses them.
CONTAINER_PARAMS = ("artifact", "image", "name", "port")


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


def container_lines(readme: str) -> list[str]:
    """The container block's lines, backslash continuations joined.

    Raises:
        SystemExit: If the README has no such block, or its first line does not set exactly
            ``CONTAINER_PARAMS``.
    """
    _, found, rest = readme.partition("\n" + CONTAINER_HEADING + "\n")
    block = re.search(r"^```bash\n(.*?)^```", rest, re.M | re.S) if found else None
    if block is None:
        raise SystemExit(f"README.md has no ```bash block under a '{CONTAINER_HEADING}' heading")
    lines, pending = [], ""
    for raw in block.group(1).splitlines():
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        if pending + line:
            lines.append(pending + line)
        pending = ""
    names = [word.split("=", 1)[0] for word in shlex.split(lines[0], comments=True)] if lines else []
    if tuple(names) != CONTAINER_PARAMS:
        raise SystemExit(f"the first line of README.md's container block must set "
                         f"{', '.join(CONTAINER_PARAMS)} (in that order); it is: {lines[:1]}")
    return lines


def container_params(readme: str) -> dict[str, str]:
    """The values the README's container block sets on its first line."""
    words = shlex.split(container_lines(readme)[0], comments=True)
    return dict(word.split("=", 1) for word in words)


def container_script(readme: str, **params: str) -> str:
    """The README's container block as a script, with ``params`` replacing its first line's
    values (the others keep the README's)."""
    lines = container_lines(readme)
    values = {**container_params(readme), **params}
    first = " ".join(f"{k}={shlex.quote(str(values[k]))}" for k in CONTAINER_PARAMS)
    return "\n".join([first, *lines[1:]]) + "\n"


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--container"]
    text = Path(args[0] if args else "README.md").read_text()
    print(container_script(text) if "--container" in sys.argv[1:] else "\n".join(commands(text)))

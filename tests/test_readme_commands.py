"""Every `deploykit ...` command in README.md's ```bash blocks is a valid invocation.

Reads whatever README.md holds: each line of a bash block that starts with `deploykit ` or
contains ` deploykit ` is split into shell commands (on &&, ||, ;, |), and each command that runs
deploykit (`deploykit ...`, `VAR=x deploykit ...`, `python3 -m deploykit ...`) must pass
`deploykit.cli.build_parser().parse_args`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deploykit.cli import build_parser

README = Path(__file__).parents[1] / "README.md"
WRAPPERS = {"time", "nohup", "exec", "env", "sudo"}


def bash_lines(markdown: str) -> list[str]:
    """The lines of ```bash / ```sh / ```shell blocks, with backslash continuations joined."""
    lines, block, pending = [], False, ""
    for raw in markdown.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            block = not block and stripped[3:].strip().lower() in ("bash", "sh", "shell", "console")
            pending = ""
            continue
        if not block:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def deploykit_commands(markdown: str) -> list[list[str]]:
    """The argument lists (after `deploykit`) of every deploykit command in the bash blocks."""
    commands = []
    for line in bash_lines(markdown):
        line = line.removeprefix("$ ")
        if not (line.startswith("deploykit ") or " deploykit " in line or line == "deploykit"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens, segment = list(lexer), []
        for token in tokens + [";"]:
            if token and set(token) <= set(";&|()"):
                argv = segment
                while argv and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]) or argv[0] in WRAPPERS):
                    argv = argv[1:]
                if argv[:1] == ["deploykit"]:
                    commands.append(argv[1:])
                elif len(argv) >= 3 and argv[0].startswith("python") and argv[1:3] == ["-m", "deploykit"]:
                    commands.append(argv[3:])
                segment = []
            else:
                segment.append(token)
    return commands


def parse_error(argv: list[str]) -> str | None:
    """None when `deploykit ARGV` parses, else argparse's complaint."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help / --version exit 0
            return stderr.getvalue().strip() or f"exit {exc.code}"
    return None


def test_the_checker_finds_commands_and_rejects_invalid_ones():
    readme = "\n".join([
        "Text with deploykit train outside a block is ignored.", "```bash",
        "pip install -e . && deploykit train --data tweets --out runs/x   # a comment",
        "BENTOML_HOME=/tmp/b deploykit build runs/art \\", "    --tag demo:v1",
        "curl -s localhost:3000/readyz | jq .; python3 -m deploykit demo --quick",
        "cd deploykit", "deploykit train --no-such-flag", "deploykit fly", "```",
        "```python", "deploykit.export.run(cfg)", "```"])
    commands = deploykit_commands(readme)
    assert commands == [["train", "--data", "tweets", "--out", "runs/x"],
                        ["build", "runs/art", "--tag", "demo:v1"], ["demo", "--quick"],
                        ["train", "--no-such-flag"], ["fly"]]
    assert [parse_error(c) is None for c in commands] == [True, True, True, False, False]
    assert "--no-such-flag" in parse_error(["train", "--no-such-flag"])


def test_every_readme_command_parses():
    commands = deploykit_commands(README.read_text())
    assert commands, "README.md has no `deploykit ...` command in a ```bash block"
    failures = {" ".join(c): parse_error(c) for c in commands if parse_error(c) is not None}
    assert not failures, "README.md commands that do not parse:\n" + "\n".join(
        f"  deploykit {cmd}\n    {err}" for cmd, err in failures.items())


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--quick", "--out", "d"], ["demo", "--overwrite"]])
def test_demo_command_parses(argv):
    assert parse_error(argv) is None


def _ci_commands() -> tuple[str, str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_commands", README.parent / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.commands(README.read_text())


def _extras(line: str) -> set[str]:
    """The extras a README line installs deploykit with (pip install -e ".[a,b]")."""
    found = re.findall(r'pip install -e "\.\[([a-z,]+)\]"', line)
    assert len(found) == 1, f"no 'pip install -e \".[EXTRAS]\"' in {line!r}"
    return set(found[0].split(","))


def test_ci_runs_the_readme_lines_and_they_install_what_they_run():
    """.ci/run takes its two commands from the README; each installs the extra its command needs."""
    import tomllib

    from deploykit import cli

    demo, tests = _ci_commands()
    assert demo.endswith("deploykit demo --quick") and tests.endswith("python -m pytest")
    declared = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _extras(demo) <= set(declared) and _extras(tests) <= set(declared)
    assert cli.NEEDS["demo"] in _extras(demo)
    assert "dev" in _extras(tests)
    # Both pin torch before deploykit (an unpinned one pulls the CUDA build).
    for line in (demo, tests):
        assert line.startswith("pip install torch==2.13.0 && ")

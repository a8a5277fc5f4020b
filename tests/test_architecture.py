"""The layout's rules (docs/architecture.md), checked on the code itself: no import circles
(function-level imports count), no module importing another's private names, and no task
comparisons outside ``deploykit/tasks/``: the stages dispatch through the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

from deploykit import tasks

PACKAGE = Path(__file__).resolve().parents[1] / "deploykit"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_circles():
    graph = grimp.build_graph("deploykit")  # every import statement, function-level ones included
    assert len(graph.modules) > 50
    assert _cycles(graph) == []


def test_the_cycle_check_can_fail():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph) == []
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]


def _sources() -> list[tuple[Path, str]]:
    return [(path, path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))]


def test_no_module_imports_private_names_of_another():
    private = []
    for path, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploykit"):
                private += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


# A task named in code, or a task's class or protocol compared: dispatch belongs to the registry.
TASK_COMPARISON = re.compile(r"\b(GENERATION|CLASSIFICATION)\b|isinstance\([^)]*\b(Generation|Classification)\b"
                             r"|protocol\s*[!=]=|\"text-(classification|generation)\"")


def test_no_task_comparisons_outside_the_task_folders():
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path, source in _sources() if PACKAGE / "tasks" not in path.parents
             for number, line in enumerate(source.splitlines(), 1) if TASK_COMPARISON.search(line)]
    assert found == []
    assert TASK_COMPARISON.search('if cfg.task == GENERATION:') and TASK_COMPARISON.search('protocol == "generate"')


def test_every_task_folder_has_the_contracts_files_and_its_head_names_it():
    for task in tasks.all_tasks():
        for part in ("head", "train", "evaluate", "export", "runtime", "serve", "predict", "example"):
            assert task.has(part), f"{task.name} has no {part}.py"
        assert task.head().TASK == task.name

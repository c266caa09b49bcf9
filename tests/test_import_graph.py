"""The import graph keeps the house rules: the domain never imports the dashboard, services never
import tasks, and no project module imports itself back through a circle.

Read from the source with `ast` (imports inside functions count too: a local import is how a
circle is usually hidden), so a wrong import fails here, in the fast suite, before review.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "venv", "run", "node_modules", "migrations", "__pycache__"}


def python_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found.extend(Path(folder) / name for name in files if name.endswith(".py"))
    return sorted(found)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of every top-level package (a folder with __init__.py whose parent has none,
    such as registry/ or sidecar/agentcom_sidecar/), by dotted name."""
    modules: dict[str, Path] = {}
    for path in python_files(root):
        folder = path.parent
        if not (folder / "__init__.py").exists():
            continue  # a script (manage.py, bench/), not part of a package
        while (folder.parent / "__init__.py").exists():
            folder = folder.parent
        parts = path.relative_to(folder.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules a module imports, anywhere in its body, except under `if TYPE_CHECKING:`."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from registry import services` imports the module registry.services; the package
            # itself counts only when a name is taken from it (`from registry.models import Host`).
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports directly."""
    return {
        name: {n for n in imported_names(name, path, modules) if n in modules and n != name}
        for name, path in modules.items()
    }


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Every module `start` imports, directly or not, each with the module that imports it."""
    via: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in sorted(graph.get(current, ())):
            if target not in via:
                via[target] = current
                todo.append(target)
    return via


def chain(via: dict[str, str | None], end: str) -> str:
    steps = [end]
    while via[steps[-1]] is not None:
        steps.append(via[steps[-1]])
    return " -> ".join(reversed(steps))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def forbidden_paths(graph: dict[str, set[str]], sources: list[str], forbidden_prefix: str) -> list[str]:
    """Import chains from any of `sources` to a module named `forbidden_prefix` or below it."""
    paths = []
    for source in sources:
        via = reachable(graph, source)
        for target in sorted(via):
            if target == forbidden_prefix or target.startswith(forbidden_prefix + "."):
                paths.append(chain(via, target))
    return paths


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    assert {"registry.services", "registry.tasks", "dashboard.broadcast", "agentcom_sidecar.agent"} <= set(modules)
    return import_graph(modules)


def test_the_registry_never_imports_the_dashboard(graph):
    registry_modules = [m for m in graph if m == "registry" or m.startswith("registry.")]
    assert forbidden_paths(graph, registry_modules, "dashboard") == []


def test_services_never_import_tasks(graph):
    assert forbidden_paths(graph, ["registry.services"], "registry.tasks") == []


def test_no_project_module_imports_itself_through_a_circle(graph):
    assert cycles(graph) == []


# The checker itself must be able to fail: each rule is shown a small tree that breaks it.


def write_tree(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(project_modules(root))


def test_the_checker_sees_a_circle_hidden_in_a_function_and_a_relative_import(tmp_path):
    graph = write_tree(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/services.py": "def queue():\n    from app import tasks\n",
            "app/tasks.py": "from . import services\n",
            "app/plain.py": "import app.services\n",
        },
    )
    assert cycles(graph) == [["app.services", "app.tasks"]]
    assert forbidden_paths(graph, ["app.services"], "app.tasks") == ["app.services -> app.tasks"]


def test_the_checker_follows_an_indirect_import_and_ignores_type_checking_blocks(tmp_path):
    graph = write_tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/models.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from web import views\n",
            "core/util.py": "from web.views import render\n",
            "core/api.py": "from core import util\n",
            "web/__init__.py": "",
            "web/views.py": "def render():\n    pass\n",
        },
    )
    assert forbidden_paths(graph, ["core.models"], "web") == []
    assert forbidden_paths(graph, ["core.api"], "web") == ["core.api -> core.util -> web.views"]

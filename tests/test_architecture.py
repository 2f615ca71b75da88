"""The package's shape, checked: layers import only downwards, no module imports itself back, no
class outgrows a reader (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jupyter_plb"

#: Each layer's rank: a module may import its own layer and those ranked lower, never a higher or
#: a sibling (same rank) layer. ``jupyter_plb`` itself is the public face over all of them.
LAYERS = {
    "errors": 0,
    "core": 1,
    "transport": 2,
    "workers": 3,
    "balancer": 4,
    "jobs": 4,
    "client": 5,
    "monitor": 6,
    "cluster": 7,
    "jupyter": 7,
    "": 8,
    "__main__": 8,
}
#: Lines a class may span.
MAX_CLASS_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, root: Path) -> Iterator[tuple[str, int, bool]]:
    """``(imported module, line, at run time)`` for every import of the package in ``path``."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node):
            typing_only.update(id(n) for n in ast.walk(node))
    known = {module_name(p, root) for p in root.rglob("*.py")}
    for node in ast.walk(tree):
        runtime = id(node) not in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name:
                    yield alias.name, node.lineno, runtime
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            for alias in node.names:
                name = f"{target}.{alias.name}"
                yield (name if name in known else target), node.lineno, runtime


def import_graph(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p, root): list(imports(p, root)) for p in sorted(root.rglob("*.py"))}


def upward_imports(root: Path, layers: dict[str, int]) -> list[str]:
    found = []
    for module, edges in import_graph(root).items():
        for target, line, _ in edges:
            here, there = layer(module), layer(target)
            if here != there and layers[here] <= layers[there]:
                found.append(f"{module}:{line} imports {target} ({here or 'top'} may not import {there})")
    return found


def import_circles(root: Path) -> list[list[str]]:
    """Strongly connected sets of modules (Tarjan) in the run-time import graph."""
    graph = {m: sorted({t for t, _, runtime in edges if runtime and t != m}) for m, edges in import_graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def long_classes(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (size := node.end_lineno - node.lineno + 1) > limit:  # type: ignore[operator]
                found.append(f"{path.relative_to(root.parent)}:{node.name} spans {size} lines")
    return found


def test_layers_import_only_downwards() -> None:
    assert not set(map(layer, import_graph(PACKAGE))) - set(LAYERS), "every package has a rank in LAYERS"
    assert upward_imports(PACKAGE, LAYERS) == []


def test_no_module_imports_itself_back() -> None:
    assert import_circles(PACKAGE) == []


def test_no_class_outgrows_a_reader() -> None:
    assert long_classes(PACKAGE, MAX_CLASS_LINES) == []


@pytest.fixture
def toy_package(tmp_path: Path) -> Path:
    root = tmp_path / "jupyter_plb"
    for folder in ("core", "client"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    return root


def test_the_checks_see_an_upward_import_a_circle_and_a_long_class(toy_package: Path) -> None:
    (toy_package / "core" / "tasks.py").write_text("def later():\n    from jupyter_plb.client import api\n")
    (toy_package / "client" / "api.py").write_text("from ..core import tasks\n")
    (toy_package / "errors.py").write_text("class Big:\n" + "    x = 1\n" * 5)
    assert upward_imports(toy_package, LAYERS) == [
        "jupyter_plb.core.tasks:2 imports jupyter_plb.client.api (core may not import client)"
    ]
    assert import_circles(toy_package) == [["jupyter_plb.client.api", "jupyter_plb.core.tasks"]]
    assert long_classes(toy_package, 5) == ["jupyter_plb/errors.py:Big spans 6 lines"]


def test_an_import_only_for_type_checking_makes_no_circle_but_still_counts_for_layers(toy_package: Path) -> None:
    (toy_package / "core" / "a.py").write_text("from jupyter_plb.core import b\n")
    (toy_package / "core" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from jupyter_plb.core import a\n"
        "    from jupyter_plb.client import api\n"
    )
    (toy_package / "client" / "api.py").write_text("")
    assert import_circles(toy_package) == []
    assert upward_imports(toy_package, LAYERS) == [
        "jupyter_plb.core.b:4 imports jupyter_plb.client.api (core may not import client)"
    ]

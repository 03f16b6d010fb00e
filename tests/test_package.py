"""The package's shape: no import cycle between its modules (function-level imports included,
``TYPE_CHECKING`` blocks excluded), and every transformers version check inside ``compat``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "adapt_hooks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = SRC.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code but under ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()

    def visit(node) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return  # annotations only: never imported at run time
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("adapt_hooks")):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import compat` imports a module, `from .x import y` imports x
                found.add(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {name}


def test_no_import_cycles():
    graph = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != "adapt_hooks"} for m, deps in graph.items() if m != "adapt_hooks"}
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert len(graph) > 40  # every module was seen


def test_transformers_versions_are_read_only_in_compat():
    readers = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.name != "compat.py" and any(word in p.read_text() for word in ("transformers.__version__", "packaging"))]
    assert not readers, f"transformers' version is read outside compat.py: {readers}"

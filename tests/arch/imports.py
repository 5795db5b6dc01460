"""Read the package's import graph from source, without importing anything."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "mnemomd"


def module_name(path: Path, root: Path) -> str:
    """``mnemomd.proxy.handler`` for ``<root>/proxy/handler.py``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[str, ...]]:
    """Every import statement of a source file, wherever it is (lazy imports and
    ``TYPE_CHECKING`` blocks included: a layer is a layer at type-check time too), as the
    candidate module names it may import, most specific first.

    ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg``; the
    caller, which knows the modules that exist, keeps the first candidate that does, for
    each name of each statement on its own.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield (alias.name,)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield (f"{target}.{alias.name}", target)


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """module -> the ``mnemomd`` modules it imports (names that are modules only)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        found: set[str] = set()
        for candidates in imports_of(path.read_text(encoding="utf-8"), module,
                                     path.name == "__init__.py"):
            name = next((c for c in candidates if c in files), None)
            if name is not None and name != module:
                found.add(name)
        graph[module] = found
    return graph

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


def imports_of(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every ``mnemomd`` module a source file imports, wherever the statement is (lazy
    imports and ``TYPE_CHECKING`` blocks included: a layer is a layer at type-check time
    too)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            # ``from pkg import module`` imports the module; ``from pkg import name``
            # imports the package. Both are yielded; the caller keeps the ones that exist.
            yield from submodules
            yield target + "?"  # the package itself, only when no submodule matched


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """module -> the ``mnemomd`` modules it imports (names that are modules only)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names = list(imports_of(path.read_text(encoding="utf-8"), module,
                                path.name == "__init__.py"))
        found: set[str] = set()
        for name in names:
            if name.endswith("?"):
                continue
            if name in files and name != module:
                found.add(name)
        for name in names:
            package = name.removesuffix("?")
            if name.endswith("?") and package in files and package != module and not any(
                    f.startswith(package + ".") for f in found):
                found.add(package)
        graph[module] = found
    return graph

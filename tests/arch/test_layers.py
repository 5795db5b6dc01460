"""Imports point down: the layer order of docs/architecture.md, enforced.

A module may import modules of its own package and of packages in lower layers. Two
packages of one layer (``proxy`` and ``api``) do not import each other. Nothing imports in a
cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.arch.imports import PACKAGE_ROOT, import_graph

#: Lowest first. Each entry is a layer: the packages (or top-level modules) in it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mnemomd",),  # the version, nothing else
    ("mnemomd.ops",),  # metrics, logging, health, notify, periodic jobs
    ("mnemomd.http",),  # the outbound client layer and the front door's HTTP plumbing
    ("mnemomd.providers",),  # one module per provider: wire formats, extraction, analysis calls
    ("mnemomd.cloud",),  # Mnemom's services: license, heartbeat
    ("mnemomd.storage", "mnemomd.kv", "mnemomd.policy"),  # database, KV store, tool policies
    ("mnemomd.config",),  # settings, sections, validation
    ("mnemomd.agents",),  # identity, the directory, the agents table
    ("mnemomd.webhooks",),  # events, endpoints, deliveries
    ("mnemomd.enforcement",),  # modes, nudges, containment
    ("mnemomd.integrity",),  # analysis, checkpoints, the session window
    ("mnemomd.observer",),  # traces, drift, leases, retention
    ("mnemomd.proxy", "mnemomd.api", "mnemomd.console"),  # what the front door routes to
    ("mnemomd.service",),  # the one builder
    ("mnemomd.cli",),  # the command line: run, migrate, check-config, management commands
    ("mnemomd.__main__",),  # python -m mnemomd
)


def unit_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str]:
    """(layer index, package) a module belongs to; the root package is only itself."""
    best: tuple[int, str] | None = None
    for index, units in enumerate(layers):
        for unit in units:
            if module == unit or (unit != "mnemomd" and module.startswith(unit + ".")):
                if best is None or len(unit) > len(best[1]):
                    best = (index, unit)
    if best is None:
        raise LookupError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return best


def upward_imports(graph: dict[str, set[str]],
                   layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import that points up a layer or sideways to another package of its layer."""
    problems = []
    for module, targets in sorted(graph.items()):
        layer, unit = unit_of(module, layers)
        for target in sorted(targets):
            target_layer, target_unit = unit_of(target, layers)
            if target_layer > layer:
                problems.append(f"{module} imports {target}, a higher layer")
            elif target_layer == layer and target_unit != unit:
                problems.append(f"{module} imports {target}, a sibling package of its layer")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    for module in import_graph():
        unit_of(module)


def test_imports_only_point_down():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_layer_order_is_the_documented_one():
    text = (PACKAGE_ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    documented = [line.split("|")[2].strip().strip("`") for line in text.splitlines()
                  if re.match(r"\| L\d+ \|", line)]
    assert documented == [", ".join(units) for units in LAYERS]


# -- the tests of the tests: each check fails on the mistake it exists to catch ---------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "mnemomd"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_an_upward_import_is_caught(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/metrics.py": "from mnemomd.proxy.relay import UpstreamClient\n",
        "proxy/__init__.py": "",
        "proxy/relay.py": "from mnemomd.ops.metrics import GatewayMetrics\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph) == [
        "mnemomd.ops.metrics imports mnemomd.proxy.relay, a higher layer"]
    assert cycles(graph) == [["mnemomd.ops.metrics", "mnemomd.proxy.relay"]]


def test_a_lazy_import_inside_a_function_is_caught(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "config/__init__.py": "def load():\n    from mnemomd.integrity import engine\n",
        "integrity/__init__.py": "",
        "integrity/engine.py": "",
    })
    assert upward_imports(import_graph(root)) == [
        "mnemomd.config imports mnemomd.integrity.engine, a higher layer"]


def test_a_sideways_import_between_proxy_and_api_is_caught(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "",
        "api/handlers.py": "from ..proxy import handler\n",
        "proxy/__init__.py": "",
        "proxy/handler.py": "",
    })
    assert upward_imports(import_graph(root)) == [
        "mnemomd.api.handlers imports mnemomd.proxy.handler, a sibling package of its layer"]


def test_a_cycle_through_a_package_init_is_caught(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "kv/__init__.py": "from mnemomd.kv.redis import RedisStore\nVALUE = 1\n",
        "kv/base.py": "",
        "kv/redis.py": "from mnemomd.kv import base\nfrom mnemomd.kv import VALUE\n",
    })
    assert cycles(import_graph(root)) == [["mnemomd.kv", "mnemomd.kv.redis"]]

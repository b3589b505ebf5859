"""Layering of the package: the domain core imports no stream framework, and no modules import each other
in a cycle (imports inside functions count: they only postpone the cycle to run time)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stream_app"
FRAMEWORKS = ("faust", "aiokafka", "mode", "prometheus_client")


def _modules() -> dict[str, Path]:
    """Every module of stream_app by dotted name (a package by its own name, for its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def test_domain_imports_no_stream_framework() -> None:
    """Each domain module, imported alone in a fresh interpreter, loads none of faust, aiokafka, mode,
    prometheus_client (models, hence river and onnxruntime, are allowed: scoring uses them)."""
    domain = [name for name in _modules() if name == "stream_app.domain" or name.startswith("stream_app.domain.")]
    code = (
        "import importlib, json, sys\n"
        f"frameworks = {FRAMEWORKS!r}\n"
        "found = {}\n"
        f"for name in {domain!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded = sorted(f for f in frameworks if f in sys.modules)\n"
        "    if loaded:\n"
        "        found[name] = loaded\n"
        "        break  # what the next modules load is no longer theirs alone\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found == {}, f"domain modules that load a stream framework (module: frameworks loaded): {found}"


def _imports(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The stream_app modules ``module`` imports anywhere in its file, resolved to modules: ``from a.b import
    c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import stream_app.x.y as z` of a package attribute
                target = target.rpartition(".")[0]
            if target and target.startswith("stream_app") and target != module:
                yield target


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component of >1 has one


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: set(_imports(name, path, known)) for name, path in modules.items()}


def test_no_import_cycles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles among stream_app modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a made-up graph with one cycle and a tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_graph_resolves_submodule_and_function_level_imports() -> None:
    graph = import_graph()
    assert "stream_app.worker.topology" in graph["stream_app.cli"]  # imported inside cmd_worker
    assert "stream_app.kafka.compat" in graph["stream_app.worker.metrics"]

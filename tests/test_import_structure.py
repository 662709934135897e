"""The dependency rule, checked on the source: ``flows -> pipelines -> core``, and no module
imports one that imports it back (deferred imports inside functions count too: a cycle hidden
in a function is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipelines", "flows")
KNOWN_CYCLES: set[frozenset[str]] = set()  # none left; a new one fails the test


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    modules = {
        _module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.is_file()
    }
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest project module the import names (a package's __init__ otherwise)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    g.add_edge(name, t)
    return g


def test_core_imports_no_pipeline_or_flow_and_pipelines_no_flow():
    g = import_graph()
    bad = [
        (a, b)
        for a, b in g.edges
        if (a.startswith("core") and b.split(".")[0] in ("pipelines", "flows"))
        or (a.startswith("pipelines") and b.startswith("flows"))
    ]
    assert not bad, bad


def test_no_pipeline_imports_another_pipeline():
    g = import_graph()
    bad = [
        (a, b)
        for a, b in g.edges
        if a.startswith("pipelines.")
        and b.startswith("pipelines.")
        and a.split(".")[1] != b.split(".")[1]
    ]
    assert not bad, bad


def test_modules_import_only_downward():
    cycles = {frozenset(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1}
    assert cycles <= KNOWN_CYCLES, sorted(sorted(c) for c in cycles - KNOWN_CYCLES)


def test_every_name_a_pipeline_exports_can_be_imported():
    """``__all__`` is the public API a customer project imports: each name must resolve (a
    name listed but never imported fails ``from pipelines.x import *`` and the user)."""
    import importlib

    for pkg in sorted(
        p.name for p in (ROOT / "pipelines").iterdir() if (p / "__init__.py").is_file()
    ):
        mod = importlib.import_module(f"pipelines.{pkg}")
        missing = [n for n in getattr(mod, "__all__", []) if not hasattr(mod, n)]
        assert not missing, (pkg, missing)

"""Import order: no cycles among medtune's modules (lazy imports included), and the report below the study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAZY_LOADERS = ("_lazy", "import_module")
"""Calls that import a module named by a string (the CLI's command table): an edge like any import."""


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imported(node: ast.AST, here: str, is_package: bool) -> set[str]:
    """The module names one AST node imports: ``import``, ``from ... import`` (relative ones resolved
    against ``here``) and a string-named import (:data:`LAZY_LOADERS`)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = here.split(".")[: len(here.split(".")) - node.level + is_package]
            base = ".".join(parts + ([base] if base else []))
        return {base} | {f"{base}.{a.name}" for a in node.names}
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if func in LAZY_LOADERS and isinstance(node.args[0].value, str):
            return {node.args[0].value}
    return set()


def import_graph() -> dict[str, set[str]]:
    """medtune module -> the medtune modules it imports anywhere in its file: at the top, inside functions,
    under ``if TYPE_CHECKING:``, or by name through :data:`LAZY_LOADERS`."""
    graph: dict[str, set[str]] = {}
    for path in (SRC / "medtune").rglob("*.py"):
        name = _module_name(path)
        graph[name] = set().union(*(_imported(node, name, path.name == "__init__.py")
                                    for node in ast.walk(ast.parse(path.read_text()))))
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_medtune_module_imports_itself_back_through_others():
    """No import cycle among all medtune modules, counting lazy, TYPE_CHECKING-only and string-named imports."""
    graph = import_graph()
    assert len(graph) > 50 and "medtune.data.spec" in graph  # the walk saw the package
    found = cycles(graph)
    assert found == [], "import cycles among: " + "; ".join(", ".join(c) for c in found)


def test_the_cycle_finder_sees_lazy_type_only_and_string_named_imports():
    """The graph counts an import inside a function, under TYPE_CHECKING and through the CLI's _lazy table."""
    graph = import_graph()
    assert "medtune.evaluate.run" in graph["medtune.cli"]  # _lazy("medtune.evaluate.run", ...)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from medtune.x import y\nif TYPE_CHECKING:\n    import medtune.z\n")
    seen = set().union(*(_imported(n, "medtune.w", False) for n in ast.walk(tree)))
    assert {"medtune.x", "medtune.x.y", "medtune.z"} <= seen
    assert _imported(ast.parse("from .b import c").body[0], "medtune.p.a", False) == {"medtune.p.b", "medtune.p.b.c"}
    assert _imported(ast.parse("from . import c").body[0], "medtune.p", True) == {"medtune.p", "medtune.p.c"}


def test_the_adapter_names_a_config_accepts_are_the_registry_s():
    """The spec's list of adapter names (kept below the adapters) and the registry's table name the same adapters."""
    from medtune.data.registry import ADAPTERS
    from medtune.data.spec import ADAPTER_NAMES

    assert set(ADAPTERS) == ADAPTER_NAMES


def test_the_report_sits_below_the_study():
    """No report module imports the study, directly or when imported."""
    graph = import_graph()
    for mod in graph:
        if mod.startswith("medtune.report"):
            assert not any(d == "medtune.study" or d.startswith("medtune.study.") for d in graph[mod]), (mod, graph[mod])
    out = subprocess.run([sys.executable, "-c", "import sys, medtune.report.build, medtune.report.render, "
                          "medtune.report.plots; print(sorted(m for m in sys.modules if m == 'medtune.study' or m.startswith('medtune.study.')))"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=True)
    assert out.stdout.strip() == "[]"

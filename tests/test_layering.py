"""Import order: no cycles among medtune's modules (lazy imports included), and the report below the study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """medtune module -> the medtune modules it imports anywhere in its file (also inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in (SRC / "medtune").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtune"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("medtune"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_averaging_study_and_report_modules_have_no_import_cycle():
    graph = import_graph()
    for mod in sorted(graph):
        if mod.startswith(("medtune.merge", "medtune.study", "medtune.report", "medtune.results")):
            assert cycle_through(graph, mod) is None, cycle_through(graph, mod)


def test_the_report_sits_below_the_study():
    graph = import_graph()
    for mod in graph:
        if mod.startswith("medtune.report"):
            assert not any(d.startswith("medtune.study") for d in graph[mod]), (mod, graph[mod])
    out = subprocess.run([sys.executable, "-c", "import sys, medtune.report.build, medtune.report.render, "
                          "medtune.report.plots; print(sorted(m for m in sys.modules if m.startswith('medtune.study')))"],
                         capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=True)
    assert out.stdout.strip() == "[]"

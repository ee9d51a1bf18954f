"""The import graph of kvcomp_vllm and kvcomp_kernels is acyclic, and the kernels import nothing of kvcomp_vllm.

Every import counts, at module level or inside a function: one deferred to dodge a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"kvcomp_vllm": ROOT / "kvcomp_vllm", "kvcomp_kernels": ROOT / "kernels"}


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of both packages (`kernels/X.py` is `kvcomp_kernels.X`)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` imports anywhere in its file, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module
            # `from pkg import sub` imports the submodule; `from mod import name` the module itself.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.name` of a non-module: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in sorted(modules.items())}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles as `[a, b, ..., a]`, one per edge that closes one in a depth-first walk; [] if acyclic."""
    state: dict[str, str] = {}  # "open" while on the walk's stack, "done" after
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_graph_sees_every_kind_of_import():
    """The builder resolves relative, package, deferred and `kvcomp_kernels` imports (checked on known edges)."""
    graph = import_graph()
    assert "kvcomp_kernels.paged" in graph["kvcomp_kernels.compaction"]  # from .paged import ...
    assert "kvcomp_vllm.vllm_integration.compacted" in graph["kvcomp_vllm.vllm_integration.report"]  # from . import
    assert "kvcomp_vllm.policies" in graph["kvcomp_vllm.vllm_integration.settings"]  # from ..policies import
    assert "kvcomp_kernels" in graph["kvcomp_vllm.vllm_integration.backend"]  # from kvcomp_kernels import
    assert "kvcomp_vllm.vllm_integration.admission" in graph["kvcomp_vllm.vllm_integration.plugin"]  # inside a function


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_find_cycles_names_each_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"c2"}, "c2": {"c"}}) == [["a", "b", "a"], ["c", "c2", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_kernels_import_nothing_of_kvcomp_vllm():
    graph = import_graph()
    offending = {
        name: sorted(t for t in targets if t.split(".")[0] == "kvcomp_vllm")
        for name, targets in graph.items()
        if name.split(".")[0] == "kvcomp_kernels" and any(t.split(".")[0] == "kvcomp_vllm" for t in targets)
    }
    assert not offending, f"kernels importing kvcomp_vllm: {offending}"

"""The package's layers import only downward, and no module imports itself back (issue 13).

Every ``import priormim.X`` / ``from priormim.X import ...`` / relative import of every module
under ``src/priormim`` counts, at module level and inside functions (a lazy import is still a
dependency); only ``if TYPE_CHECKING:`` blocks, which never run, and ``importlib.import_module``
calls (names in strings) are left out. A module may
import its own layer or a lower one (:data:`LAYERS`).

Today's violations and cycles are listed in :data:`KNOWN_VIOLATIONS` / :data:`KNOWN_CYCLES`:
the strict tests are expected to fail until the refactor removes them (then drop the xfail),
and the ratchet tests fail as soon as a new one appears.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "priormim"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Layer of each top-level module or sub-package of priormim (its first name after
# ``priormim.``); higher numbers sit on top. "" is the package itself (priormim/__init__.py),
# a facade on top: it hands out priormim.models.hub's functions (through importlib, which this
# graph does not see, like the CLI's importlib loading of its sub-commands).
LAYERS: dict[str, int] = {
    # 0: foundations (config is plain typed data; outputs: output-folder claims)
    "errors": 0, "io": 0, "io_dicom": 0, "io_dicom_imagecodecs": 0, "io_manifest": 0, "config": 0,
    "config_validate": 0, "devices": 0, "outputs": 0,
    # 1: priors, masking strategies, losses, metrics (one layer: they may import each other)
    "priors": 1, "masking": 1, "losses": 1, "metrics": 1,
    # 2: networks, and the pretraining methods built on them (network + loss)
    "models": 2, "methods": 2,
    # 3: data sets, synthetic data and DICOM/video ingestion into data sets
    "data": 3, "ingest": 3,
    # 4: training loops
    "training": 4,
    # 5: metrics, comparisons, figures
    "evaluation": 5,
    # 6: entry points
    "benchmark": 6, "cli": 6, "demo": 6, "__main__": 6, "": 6,
}

# Upward imports today (importer, imported), to be removed by the refactor of issue 13; the
# import sits in the function named, else at module level.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
# Import cycles today, each as the sorted modules of one strongly connected component.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name
    imported: str
    line: int
    scope: str  # "module" or the enclosing function's name

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.scope}, line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    if key not in LAYERS:
        raise AssertionError(f"{module} has no layer: add '{key}' to LAYERS in tests/test_layers.py")
    return LAYERS[key]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The most specific known module ``name`` refers to (``a.b.func`` -> ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every priormim import in ``path``, at any depth but under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    edges: list[Edge] = []

    def add(target: str, node: ast.AST, scope: str) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            resolved = _resolve(target, modules)
            if resolved != module:
                edges.append(Edge(module, resolved, node.lineno, scope))

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, scope)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, scope)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{source}.{alias.name}"
                    add(sub if sub in modules else source, child, scope)
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "module")
    return list(dict.fromkeys(edges))  # `from x import a, b` is one import


def import_graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = all_modules()
    edges = [e for m, p in modules.items() for e in imports_of(m, p, modules)]
    return modules, edges


def layer_violations(edges: list[Edge]) -> set[tuple[str, str]]:
    return {(e.importer, e.imported) for e in edges if layer_of(e.imported) > layer_of(e.importer)}


def import_cycles(modules: dict[str, Path], edges: list[Edge]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan), as sorted tuples."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: set[tuple[str, ...]] = set()
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def _describe(violations: set[tuple[str, str]], edges: list[Edge]) -> str:
    lines = []
    for importer, imported in sorted(violations):
        where = [e for e in edges if (e.importer, e.imported) == (importer, imported)]
        lines.append(f"{importer} (layer {layer_of(importer)}) imports {imported} (layer {layer_of(imported)}): "
                     + ", ".join(f"{e.scope} line {e.line}" for e in where))
    return "\n".join(lines)


MODULES, EDGES = import_graph()


def test_graph_sees_module_function_and_relative_imports(tmp_path):
    """The parser finds what it must: module- and function-level, absolute and relative imports."""
    found = {(e.importer, e.imported, e.scope) for e in EDGES}
    assert ("priormim.training.pretrain", "priormim.methods", "module") in found
    assert ("priormim.training.pretrain_setup", "priormim.training.segmentor", "prepare_segmentor") in found
    assert ("priormim.masking.score", "priormim.masking.base", "module") in found  # from .base import
    # A lazy relative import (the package has none left, so a module written for the test).
    path = tmp_path / "a.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n"
                    "def f():\n    from .b import g\n    from .. import io\n", encoding="utf-8")
    modules = {"priormim.masking.a": path, "priormim.masking.b": path, "priormim.masking.c": path, "priormim.io": path}
    assert {(e.imported, e.scope) for e in imports_of("priormim.masking.a", path, modules)} == {
        ("priormim.masking.b", "f"), ("priormim.io", "f")}
    for m in MODULES:
        layer_of(m)  # every module has a layer


def test_checks_catch_an_upward_import_and_a_cycle():
    modules = {"priormim.models.a": Path("a.py"), "priormim.data.b": Path("b.py")}
    edges = [Edge("priormim.models.a", "priormim.data.b", 3, "f"), Edge("priormim.data.b", "priormim.models.a", 1, "module")]
    assert layer_violations(edges) == {("priormim.models.a", "priormim.data.b")}
    assert import_cycles(modules, edges) == {("priormim.data.b", "priormim.models.a")}
    assert import_cycles(modules, edges[1:]) == set()


@pytest.mark.xfail(bool(KNOWN_VIOLATIONS), strict=True, reason="today's layer violations (KNOWN_VIOLATIONS): "
                   + "; ".join(f"{a} -> {b}" for a, b in sorted(KNOWN_VIOLATIONS)))
def test_layers_import_only_downward():
    violations = layer_violations(EDGES)
    assert not violations, "upward imports:\n" + _describe(violations, EDGES)


@pytest.mark.xfail(bool(KNOWN_CYCLES), strict=True, reason="today's import cycles (KNOWN_CYCLES): "
                   + "; ".join(" <-> ".join(c) for c in sorted(KNOWN_CYCLES)))
def test_no_import_cycles():
    cycles = import_cycles(MODULES, EDGES)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sorted(cycles))


def test_no_new_layer_violations():
    new = layer_violations(EDGES) - KNOWN_VIOLATIONS
    assert not new, ("new upward imports (a module may import only its own layer or lower; see LAYERS in "
                     "tests/test_layers.py):\n" + _describe(new, EDGES))


def test_no_new_import_cycles():
    cycles = import_cycles(MODULES, EDGES)
    new = [c for c in cycles if not any(set(c) <= set(k) for k in KNOWN_CYCLES)]
    assert not new, "new import cycles:\n" + "\n".join(" <-> ".join(c) for c in sorted(new))


def test_known_lists_are_current():
    """A violation or cycle the refactor removed leaves these lists too (keeps the xfail reasons exact;
    once both lists are empty the strict tests above run as plain tests)."""
    gone = sorted(KNOWN_VIOLATIONS - layer_violations(EDGES))
    assert not gone, f"fixed, remove from KNOWN_VIOLATIONS in tests/test_layers.py: {gone}"
    cycles = import_cycles(MODULES, EDGES)
    gone_cycles = sorted(KNOWN_CYCLES - cycles)
    assert not gone_cycles, f"changed or fixed, update KNOWN_CYCLES in tests/test_layers.py to {sorted(cycles)}"

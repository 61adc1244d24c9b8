"""The product's import graph: no circles, and every import follows the written directions (CONTRIBUTING.md).

Imports are read from the source (module level and inside functions alike: a lazy import is still a
dependency), resolved to product modules, then grouped into areas. An area may import itself and the areas
listed for it in ``ALLOWED``; the dispatcher reaches commands by name (``importlib``), not by import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "mobileclip_export"
FOLDERS = {"core": PKG} | {
    f: f"{PKG}.{f}" for f in ("models", "reparam", "export", "benchmarks", "matrix", "library")
}

BASE = "base"  # mobileclip_export itself: errors, hashing, stdio, version, the dispatcher
CONTRACTS = "export"  # export/'s root: Target interface, spec, registry, image input, parity, tolerances
# Everything the export run is built on (the pipeline's own imports).
EXPORT_LAYERS = {"models", "reparam", CONTRACTS, "export.compression", "export.bundle", "export.zeroshot"}
# area -> areas it may import (besides itself and BASE); each row names only rows above it.
ALLOWED: dict[str, set[str]] = {
    BASE: set(),
    "models": set(),
    "reparam": {"models"},
    CONTRACTS: {"models"},
    "export.bundle": {"models", CONTRACTS},
    "export.zeroshot": {"models", "reparam", CONTRACTS, "export.bundle"},  # reparam: fused checkpoints
    # zeroshot: the accuracy gate scores zero-shot accuracy on the user's images
    "export.compression": {"models", CONTRACTS, "export.bundle", "export.zeroshot"},
    "export.backends": {"models", "reparam", CONTRACTS, "export.compression"},
    "export.pipeline": EXPORT_LAYERS,
    "library": {"models", CONTRACTS, "export.bundle", "export.zeroshot", "export.pipeline"},
    "benchmarks": EXPORT_LAYERS | {"export.pipeline", "library"},
    "matrix": {"models", "reparam", CONTRACTS, "export.bundle", "export.pipeline", "benchmarks"},
    "commands": EXPORT_LAYERS | {"export.pipeline", "library", "benchmarks", "matrix"},
}
# The Target interface is the contract every backend implements: it imports no layer above the contracts.
TARGET_INTERFACE = f"{PKG}.export.target"


def product_modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py") if (ROOT / folder).is_dir() else []:
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            mods[".".join([pkg, *parts])] = path
    return mods


def _imported(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_pkg else module.split(".")[:-1]
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def import_graph() -> dict[str, set[str]]:
    """module -> the product modules it imports (submodule when ``from pkg import submodule``)."""
    mods = product_modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = _imported(node, module, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom) and any(n in mods for n in names[:-1]):
                names = names[:-1]  # `from pkg import sub`: the dependency is the submodule
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    deps.add(name)
        graph[module] = deps
    return graph


def area(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in {*FOLDERS, "commands"}:
        return BASE
    if module == f"{PKG}.export.backends":
        return CONTRACTS  # the folder the registry scans; each backend inside is export.backends
    if parts[1] == "export":
        return f"export.{parts[2]}" if len(parts) > 2 and f"export.{parts[2]}" in ALLOWED else CONTRACTS
    return parts[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        mine = area(module)
        for dep in sorted(deps):
            theirs = area(dep)
            if theirs not in {mine, BASE} and theirs not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) imports {dep} ({theirs})")
    return bad


def test_every_area_is_placed() -> None:
    assert {area(m) for m in import_graph()} <= set(ALLOWED)


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_imports_follow_the_written_directions() -> None:
    assert direction_violations(import_graph()) == []


def test_the_target_interface_imports_only_contracts() -> None:
    deps = import_graph()[TARGET_INTERFACE]
    assert {area(d) for d in deps} <= {CONTRACTS, BASE}, sorted(deps)


def test_the_checks_catch_a_circle_and_a_wrong_direction() -> None:
    graph = {f"{PKG}.models.a": {f"{PKG}.export.pipeline.b"}, f"{PKG}.export.pipeline.b": {f"{PKG}.models.a"}}
    assert cycles(graph) == [sorted(graph)]
    assert direction_violations(graph) == [
        f"{PKG}.models.a (models) imports {PKG}.export.pipeline.b (export.pipeline)"
    ]

"""Target discovery: every module or package in ``export/backends/`` that assigns ``TARGET`` at top level.

Adding a backend is adding one file (or one package whose ``__init__`` assigns ``TARGET``) there; nothing here
names a target. Modules without a top-level ``TARGET`` (shared helpers, ``_``-prefixed ones) are not imported,
so a helper that needs torch at import keeps ``--help`` and target listing light. Names and aliases are one
namespace: a clash raises ``RegistryError`` instead of one target silently shadowing another.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from types import ModuleType

from mobileclip_export.errors import RegistryError, UnknownNameError
from mobileclip_export.export import backends
from mobileclip_export.export.target import Target


def declares_target(source: Path) -> bool:
    """True when the module file assigns the name ``TARGET`` at top level (read, not imported)."""
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(t, ast.Name) and t.id == "TARGET" for t in targets
        ):
            return True
    return False


def target_modules(package: ModuleType) -> list[str]:
    """Dotted names of the modules/packages directly in ``package`` that declare a target, sorted."""
    names = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        base = Path(info.module_finder.path) / info.name  # type: ignore[union-attr]
        source = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
        if source.is_file() and declares_target(source):
            names.append(f"{package.__name__}.{info.name}")
    return names


def build_registry(targets: Iterable[Target]) -> tuple[dict[str, Target], dict[str, str]]:
    """``({name: target} in listing order, {name or alias: name})``; a name or alias claimed twice raises."""
    found: dict[str, Target] = {}
    table: dict[str, str] = {}
    for target in targets:
        for key in (target.name, *target.aliases):
            key = key.lower()
            if key in table or key == "all":
                owner = table.get(key, "the selector 'all'")
                raise RegistryError(
                    f"target {target.name!r} claims {key!r}, already taken by target {owner!r}: "
                    "rename the target or drop the alias"
                )
            table[key] = target.name
        found[target.name] = target
    return dict(sorted(found.items(), key=lambda kv: kv[1].order)), table


@cache
def _registry() -> tuple[dict[str, Target], dict[str, str]]:
    modules = [importlib.import_module(name) for name in target_modules(backends)]
    return build_registry(module.TARGET() for module in modules)


def all_targets() -> dict[str, Target]:
    return dict(_registry()[0])


def aliases() -> dict[str, str]:
    """``{name or alias: name}`` over ``all_targets()`` (a test that swaps the targets sees its aliases)."""
    return build_registry(all_targets().values())[1]


def get_target(name: str) -> Target:
    table = aliases()
    key = name.lower()
    if key not in table:
        raise UnknownNameError("target", name, [*all_targets(), "all"])
    return all_targets()[table[key]]

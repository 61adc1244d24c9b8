"""Target discovery: every module or package in ``export/backends/`` that defines ``TARGET`` is a target.

Adding a backend is adding one file (or one package whose ``__init__`` exposes ``TARGET``) there; nothing here
names a target.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from mobileclip_export.errors import UnknownNameError
from mobileclip_export.export import backends
from mobileclip_export.export.target import Target


@cache
def all_targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for info in sorted(pkgutil.iter_modules(backends.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{backends.__name__}.{info.name}")
        cls = getattr(module, "TARGET", None)
        if cls is None:
            continue
        target = cls()
        if target.name in found:
            raise RuntimeError(f"two backends claim the target name {target.name!r}")
        found[target.name] = target
    return dict(sorted(found.items(), key=lambda kv: getattr(kv[1], "order", 100)))


def aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, target in all_targets().items():
        table[name] = name
        for alias in target.aliases:
            table[alias] = name
    return table


def get_target(name: str) -> Target:
    table = aliases()
    key = name.lower()
    if key not in table:
        raise UnknownNameError("target", name, [*all_targets(), "all"])
    return all_targets()[table[key]]

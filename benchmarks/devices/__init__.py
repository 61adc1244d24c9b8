"""On-device runners behind one interface (``DeviceRunner.check`` / ``run`` / ``tool_for``), giving rows.

``RUNNERS`` is the registry: runner name -> ``"module:Class"``, imported only when that runner is asked for
(the iOS runner needs coremltools, the Android one adb). Adding a runner is one module with a ``DeviceRunner``
subclass plus one ``register_runner`` line here; the bench CLI offers ``--device`` choices from this table.
"""

from __future__ import annotations

import importlib

from mobileclip_export.benchmarks.devices.base import DeviceJob, DeviceRow, DeviceRunner, DeviceUnavailable
from mobileclip_export.errors import RegistryError, UnknownNameError

__all__ = [
    "DeviceJob",
    "DeviceRow",
    "DeviceRunner",
    "DeviceUnavailable",
    "RUNNERS",
    "get_runner",
    "register_runner",
    "runner_names",
]

RUNNERS: dict[str, str] = {}


def register_runner(name: str, spec: str) -> None:
    """Register ``spec`` (``"package.module:Class"``) under ``name``; a name registered twice raises."""
    if name in RUNNERS or name == "host":
        raise RegistryError(f"device runner {name!r} is already registered ({RUNNERS.get(name, 'the host')})")
    RUNNERS[name] = spec


def runner_names() -> list[str]:
    return list(RUNNERS)


def get_runner(name: str, *, serial: str | None = None) -> DeviceRunner:
    if name not in RUNNERS:
        raise UnknownNameError("device runner", name, runner_names())
    module, _, cls_name = RUNNERS[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, DeviceRunner)) or cls.name != name:
        raise RegistryError(f"device runner {name!r} ({RUNNERS[name]}) is not a DeviceRunner named {name!r}")
    return cls.from_options(serial=serial)


register_runner("android", "mobileclip_export.benchmarks.devices.android:AndroidRunner")
register_runner("ios", "mobileclip_export.benchmarks.devices.ios:IosRunner")

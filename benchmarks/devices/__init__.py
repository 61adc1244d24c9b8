"""On-device runners behind one interface (``DeviceRunner.check`` / ``run``) producing report rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.devices.base import DeviceJob, DeviceRow, DeviceRunner, DeviceUnavailable
from mobileclip_export.errors import UnknownNameError

__all__ = ["DeviceJob", "DeviceRow", "DeviceRunner", "DeviceUnavailable", "get_runner", "tool_for"]

RUNNERS = ("android", "ios")


def get_runner(name: str, **kwargs: Any) -> DeviceRunner:
    if name == "android":
        from mobileclip_export.benchmarks.devices.android import AndroidRunner

        return AndroidRunner(serial=kwargs.get("serial"))
    if name == "ios":
        from mobileclip_export.benchmarks.devices.ios import IosRunner

        return IosRunner()
    raise UnknownNameError("device runner", name, list(RUNNERS))


def tool_for(runner: DeviceRunner, artifact: Path) -> str | None:
    """Name of the on-device tool that runs ``artifact`` with ``runner`` (None: this runner cannot run it)."""
    if runner.name == "android":
        from mobileclip_export.benchmarks.devices.android import TOOLS

        return TOOLS.get(artifact.suffix)
    if runner.name == "ios":
        return "MLModelBenchmarker" if artifact.suffix in (".mlpackage", ".mlmodel", ".mlmodelc") else None
    return None

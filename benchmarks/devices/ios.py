"""iPhone from a Mac: coremltools' remote-device benchmarker (a timed predict loop in an app on the phone).

Needs macOS with Xcode (``devicectl``) and a connected, paired iPhone; anywhere else ``check`` says so.
"""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.devices.base import DeviceJob, DeviceRow, DeviceRunner, DeviceUnavailable

_SUFFIXES = (".mlpackage", ".mlmodel", ".mlmodelc")


class IosRunner(DeviceRunner):
    name = "ios"

    def __init__(self) -> None:
        self._device: Any = None

    def tool_for(self, artifact: Path) -> str | None:
        return "MLModelBenchmarker" if artifact.suffix in _SUFFIXES else None

    def check(self) -> dict[str, Any]:
        if platform.system() != "Darwin":
            raise DeviceUnavailable(
                f"iOS benchmarking needs macOS with Xcode and a connected iPhone; this machine runs "
                f"{platform.system()}. Copy the .mlpackage to a Mac and run the same command there."
            )
        try:
            from coremltools.models.ml_program.experimental.remote_device import Device, DeviceType
        except ImportError as err:
            raise DeviceUnavailable(f"coremltools with remote-device support is needed: {err}") from err
        devices = Device.get_connected_devices(DeviceType.IPHONE)
        if not devices:
            raise DeviceUnavailable(
                "no iPhone connected (devicectl lists none); connect and pair one in Xcode"
            )
        self._device = devices[0]
        return {
            "name": str(getattr(self._device, "name", "iPhone")),
            "os": "iOS",
            "cpu": "Apple SoC",
            "cores": None,
            "threads": None,
            "kind": "device",
        }

    def run(self, job: DeviceJob) -> DeviceRow:  # pragma: no cover - needs a Mac and a phone
        info = (
            self.check()
            if self._device is None
            else {"name": str(self._device), "os": "iOS", "kind": "device"}
        )
        import coremltools as ct
        from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker

        async def go() -> tuple[Any, Any]:
            device = await self._device.prepare_for_model_debugging()
            bench = MLModelBenchmarker(ct.models.MLModel(str(job.artifact)), device=device)
            load = await bench.benchmark_load(iterations=1)
            pred = await bench.benchmark_predict(iterations=job.runs, warmup=job.warmup > 0)
            return load, pred

        load, pred = asyncio.run(go())
        from mobileclip_export.benchmarks.stats import summarize

        row = DeviceRow(job=job, device=info, runtime="Core ML on device (coremltools MLModelBenchmarker)")
        row.load_ms = load.samples[0] if load.samples else None
        row.latency = summarize(pred.samples).to_dict()
        return row

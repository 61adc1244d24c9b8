"""One interface for on-device runners; each measurement becomes a ``ReportRow`` like the host rows
(``record_kind: device``), so ``report.records_from_rows`` turns them into the same JSON records."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.rows import ReportRow
from mobileclip_export.errors import UsageError
from mobileclip_export.export.bundle.layout import path_bytes


class DeviceUnavailable(UsageError):
    """No reachable device (none attached, unauthorized, wrong host OS, tool missing); the message says."""


@dataclass
class DeviceJob:
    """One artifact to time on a device."""

    artifact: Path
    target: str
    encoder: str
    precision: str
    runs: int = 50
    warmup: int = 5
    threads: int = 1
    tool: Path | None = (
        None  # local binary to push (benchmark_model / executor_runner); None: already on device
    )


@dataclass
class DeviceRow:
    """What a device runner measured; ``as_row()`` is its report row."""

    job: DeviceJob
    device: dict[str, Any]
    runtime: str
    status: str = "ok"
    load_ms: float | None = None
    first_ms: float | None = None
    memory_mb: float | None = None
    latency: dict[str, float] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> ReportRow:
        j = self.job
        size = path_bytes(j.artifact) if j.artifact.exists() else None  # .mlpackage is a directory
        return ReportRow(
            target=j.target,
            encoder=j.encoder,
            precision=j.precision,
            record_kind="device",
            status=self.status,
            runtime=self.runtime,
            artifact=str(j.artifact),
            size_mb=size / 1e6 if size else None,
            load_ms=self.load_ms,
            first_ms=self.first_ms,
            rss_delta_mb=self.memory_mb,
            latency=self.latency,
            device=self.device,
        )


class DeviceRunner(ABC):
    name: str = ""  # the key it is registered under in ``devices.RUNNERS``

    @classmethod
    def from_options(cls, *, serial: str | None = None) -> DeviceRunner:
        """Build from the bench options; a runner that selects among attached devices uses ``serial``."""
        return cls()

    @abstractmethod
    def tool_for(self, artifact: Path) -> str | None:
        """Name of the on-device tool that runs ``artifact`` (None: this runner cannot run it)."""

    @abstractmethod
    def check(self) -> dict[str, Any]:
        """Describe the device ({name, os, cpu, cores, threads, kind: device}) or raise DeviceUnavailable."""

    @abstractmethod
    def run(self, job: DeviceJob) -> DeviceRow: ...

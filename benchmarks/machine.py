"""Describe the machine a benchmark ran on and measure its dense fp32 matmul throughput.

The peak is measured, not looked up: ``torch.mm`` on large square fp32 matrices with the same thread count the
candidates use, best of a few repetitions. Achieved GFLOP/s of a model divided by this number says how far the
model is from what this CPU can do on the friendliest possible workload.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    os: str
    cpu: str
    cores: int
    threads: int
    kind: str = "host"  # "host" | "device"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cpu_model() -> str:
    """CPU model string from /proc/cpuinfo (Linux), sysctl-free fallback to platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def describe_host(threads: int) -> DeviceInfo:
    return DeviceInfo(
        name=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        cpu=f"{cpu_model()} ({platform.machine()})",
        cores=usable_cores(),
        threads=threads,
    )

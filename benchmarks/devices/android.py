"""Android over adb: push the artifact (and the tool if given), pin to the fastest cores, run, parse.

Which tool runs an artifact is a property of its file format: ``.tflite`` -> LiteRT ``benchmark_model``,
``.pte`` -> ExecuTorch ``executor_runner``. Threads are pinned with ``taskset <hexmask>`` to the ``threads``
cores with the highest ``cpuinfo_max_freq`` (the big cores), and the tool's own thread flag is set to match.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.devices import parsers
from mobileclip_export.benchmarks.devices.adb import Adb
from mobileclip_export.benchmarks.devices.base import DeviceJob, DeviceRow, DeviceRunner, DeviceUnavailable
from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)

REMOTE_DIR = "/data/local/tmp/mobileclip_bench"
TOOLS = {".tflite": "benchmark_model", ".pte": "executor_runner"}
FREQ_QUERY = (
    "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    "echo ${c##*cpu} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); done"
)


def core_frequencies(text: str) -> dict[int, int]:
    """Parse "<cpu> <max kHz>" lines; cores without cpufreq are left out."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def big_core_mask(freqs: dict[int, int], threads: int) -> tuple[str, list[int]]:
    """Hex taskset mask of the ``threads`` fastest cores (ties: higher cpu number, where big cores sit)."""
    if not freqs:
        raise DeviceUnavailable("could not read any cpufreq/cpuinfo_max_freq on the device to pick big cores")
    if threads > len(freqs):
        raise UsageError(f"--threads {threads} exceeds the device's {len(freqs)} cores")
    cores = sorted(freqs, key=lambda c: (freqs[c], c), reverse=True)[:threads]
    return format(sum(1 << c for c in cores), "x"), sorted(cores)


class AndroidRunner(DeviceRunner):
    name = "android"

    def __init__(self, serial: str | None = None, adb: Adb | None = None) -> None:
        self.adb = adb or Adb(serial=serial)
        self._info: dict[str, Any] | None = None
        self._freqs: dict[int, int] = {}

    @classmethod
    def from_options(cls, *, serial: str | None = None) -> AndroidRunner:
        return cls(serial=serial)

    def tool_for(self, artifact: Path) -> str | None:
        return TOOLS.get(artifact.suffix)

    def check(self) -> dict[str, Any]:
        serial = self.adb.select()
        model = self.adb.getprop("ro.product.model")
        release = self.adb.getprop("ro.build.version.release")
        soc = self.adb.getprop("ro.soc.model") or self.adb.getprop("ro.board.platform")
        abi = self.adb.getprop("ro.product.cpu.abi")
        self._freqs = core_frequencies(self.adb.shell(FREQ_QUERY))
        self._info = {
            "name": f"{model} ({serial})",
            "os": f"Android {release}",
            "cpu": f"{soc} ({abi})",
            "cores": len(self._freqs),
            "threads": None,
            "kind": "device",
        }
        return dict(self._info)

    def _command(self, tool: str, remote_model: str, job: DeviceJob) -> str:
        if tool == "benchmark_model":
            args = [
                f"--graph={remote_model}",
                f"--num_threads={job.threads}",
                f"--num_runs={job.runs}",
                f"--warmup_runs={job.warmup}",
                "--use_xnnpack=true",
            ]
        else:
            args = [
                f"--model_path={remote_model}",
                f"--num_executions={job.warmup + job.runs}",
                f"--cpu_threads={job.threads}",
            ]
        return f"{REMOTE_DIR}/{tool} " + " ".join(shlex.quote(a) for a in args)

    def run(self, job: DeviceJob) -> DeviceRow:
        info = self.check() if self._info is None else dict(self._info)
        tool = TOOLS.get(job.artifact.suffix)
        if tool is None:
            raise UsageError(
                f"{job.artifact.name}: no Android benchmark tool for {job.artifact.suffix!r} files "
                f"(supported: {', '.join(TOOLS)})"
            )
        if not job.artifact.is_file():
            raise UsageError(f"artifact {str(job.artifact)!r} does not exist")
        mask, cores = big_core_mask(self._freqs, job.threads)
        self.adb.shell(f"mkdir -p {REMOTE_DIR}")
        remote_model = f"{REMOTE_DIR}/{job.artifact.name}"
        self.adb.push(job.artifact, remote_model)
        if job.tool is not None:
            self.adb.push(Path(job.tool), f"{REMOTE_DIR}/{tool}")
            self.adb.shell(f"chmod 755 {REMOTE_DIR}/{tool}")
        elif "No such file" in self.adb.shell(f"ls {REMOTE_DIR}/{tool}", check=False):
            raise DeviceUnavailable(
                f"{tool} is not on the device at {REMOTE_DIR}/{tool}; pass --device-tool PATH "
                f"to a build for {info['cpu']}"
            )
        text = self.adb.shell(f"taskset {mask} {self._command(tool, remote_model, job)}", check=False)
        info["threads"] = job.threads
        runtime = f"{tool} on cores {cores} (taskset {mask})"
        row = DeviceRow(job=job, device=info, runtime=runtime)
        try:
            if tool == "benchmark_model":
                p = parsers.parse_benchmark_model(text)
                row.load_ms, row.first_ms = p["init_ms"], p["first_ms"]
                row.memory_mb = p.get("memory_overall_mb", p.get("memory_peak_mb"))
                row.latency = parsers.benchmark_model_latency(p)
            else:
                p = parsers.parse_executor_runner(text, warmup=job.warmup)
                row.load_ms, row.first_ms = p.get("load_ms"), p.get("first_ms")
                # Without per-iteration lines only the mean is known: no median or trimmed mean is invented.
                row.latency = p.get("stats") or {"n": p["executions"], "mean": p["avg_ms"]}
            row.raw = p
        except parsers.ParseError as err:
            row.status = f"failed: {err}"
        return row

"""A thin, testable wrapper around the ``adb`` executable (found on PATH, or $ADB)."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mobileclip_export.benchmarks.devices.base import DeviceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    state: str  # "device" (ready), "unauthorized", "offline", ...


class Adb:
    def __init__(
        self, executable: str | None = None, serial: str | None = None, timeout: float = 600.0
    ) -> None:
        exe = executable or os.environ.get("ADB") or shutil.which("adb")
        if exe is None:
            raise DeviceUnavailable(
                "adb not found: install Android platform-tools and put adb on PATH (or set $ADB)"
            )
        self.exe = exe
        self.serial = serial
        self.timeout = timeout

    def _cmd(self, *args: str, serial: bool = True) -> list[str]:
        head = [self.exe]
        if serial and self.serial:
            head += ["-s", self.serial]
        return [*head, *args]

    def _run(self, *args: str, serial: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self._cmd(*args, serial=serial)
        log.debug("running %s", shlex.join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as err:
            raise DeviceUnavailable(f"{shlex.join(cmd)} timed out after {self.timeout:g}s") from err
        if check and proc.returncode != 0:
            raise DeviceUnavailable(
                f"{shlex.join(cmd)} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def devices(self) -> list[AdbDevice]:
        out = self._run("devices", serial=False).stdout
        found = []
        for line in out.splitlines():
            line = line.strip()
            if not line or line.startswith(("List of devices", "*")):
                continue
            parts = line.split()
            if len(parts) >= 2:
                found.append(AdbDevice(parts[0], parts[1]))
        return found

    def select(self) -> str:
        """Pick the device (the given serial, or the only ready one); say clearly why none can be used."""
        devs = self.devices()
        ready = [d.serial for d in devs if d.state == "device"]
        if self.serial is not None:
            match = [d for d in devs if d.serial == self.serial]
            if not match:
                listed = ", ".join(f"{d.serial} ({d.state})" for d in devs) or "none"
                raise DeviceUnavailable(
                    f"Android device {self.serial!r} is not attached (adb devices: {listed})"
                )
            if match[0].state != "device":
                raise DeviceUnavailable(
                    f"Android device {self.serial!r} is {match[0].state}; "
                    "unlock it and accept the USB debugging prompt"
                )
            return self.serial
        if not devs:
            raise DeviceUnavailable(
                "no Android device attached (adb devices lists none); connect a phone with "
                "USB debugging enabled, or pass --serial"
            )
        if not ready:
            states = ", ".join(f"{d.serial} ({d.state})" for d in devs)
            raise DeviceUnavailable(
                f"no Android device is ready: {states}; unlock it and accept the USB debugging prompt"
            )
        if len(ready) > 1:
            raise DeviceUnavailable(
                f"several Android devices attached ({', '.join(ready)}); choose one with --serial"
            )
        self.serial = ready[0]
        return self.serial

    def shell(self, command: str, check: bool = True) -> str:
        proc = self._run("shell", command, check=check)
        return proc.stdout + proc.stderr

    def push(self, local: Path, remote: str) -> None:
        self._run("push", str(local), remote)

    def getprop(self, key: str) -> str:
        return self.shell(f"getprop {shlex.quote(key)}").strip()

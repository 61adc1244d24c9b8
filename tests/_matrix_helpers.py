"""Shared helpers of the matrix tests (kept out of conftest so plain imports stay explicit)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from mobileclip_export.hashing import path_sha256
from mobileclip_export.matrix.store import STAGING
from mobileclip_export.matrix.worker import CONVERTING


def assert_bundles_consistent(output: Path) -> int:
    """Every manifest lists only artifacts that exist with the recorded sha256; returns how many."""
    n = 0
    for manifest in (output / "bundles").glob("*/manifest.json"):
        for rec in json.loads(manifest.read_text())["artifacts"]:
            assert rec["status"] == "verified", rec
            assert path_sha256(manifest.parent / rec["path"]) == rec["sha256"], rec["path"]
            n += 1
    return n


def artifact_hashes(output: Path) -> dict[str, str]:
    out = {}
    for manifest in (output / "bundles").glob("*/manifest.json"):
        for rec in json.loads(manifest.read_text())["artifacts"]:
            out[rec["path"]] = path_sha256(manifest.parent / rec["path"])
    return out


class KillFirstConversion(threading.Thread):
    """SIGKILLs the first ``times`` workers seen converting a cell whose id starts with ``prefix``."""

    def __init__(self, output: Path, prefix: str, times: int = 1, timeout: float = 600) -> None:
        super().__init__(daemon=True)
        self.output, self.prefix, self.times, self.timeout = output, prefix, times, timeout
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < end and len(self.killed) < self.times:
            for marker in (self.output / STAGING).glob(f"{self.prefix}*/{CONVERTING}"):
                try:
                    pid = int(marker.read_text())
                    if pid not in self.killed:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                except (OSError, ValueError):
                    continue
            time.sleep(0.02)

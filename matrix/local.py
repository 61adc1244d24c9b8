"""The local pool: up to N worker processes, admitted by estimated memory, each cell in a fresh process.

A fresh ``python -m mobileclip_export.matrix.worker`` per cell means a crash (OOM kill, SIGKILL, segfault in a
converter) takes down only that cell, and the memory of a large conversion is returned to the OS when it ends.
A cell whose process dies without a result is retried up to ``max_attempts`` times, then reported failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobileclip_export.export.bundle.layout import remove_path
from mobileclip_export.matrix.jobs import Job
from mobileclip_export.matrix.store import commit, new_staging
from mobileclip_export.matrix.worker import COORDINATOR_ENV, RESULT

log = logging.getLogger(__name__)

OnDone = Callable[[Job, dict[str, Any]], None]
POLL_SECONDS = 0.05
WORKER_MODULE = "mobileclip_export.matrix.worker"


def available_memory() -> int:
    """MemAvailable (Linux), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class _Running:
    job: Job
    attempt: int
    staging: Path
    proc: subprocess.Popen


def _launch(job: Job, output: Path, attempt: int, threads: int) -> _Running:
    staging = new_staging(output, job, attempt)
    (staging / "job.json").write_text(json.dumps(job.to_dict(), default=str), "utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), COORDINATOR_ENV: str(os.getpid())}
    with (staging / "worker.log").open("wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(staging / "job.json"), str(staging)],
            stdout=logf, stderr=subprocess.STDOUT, env=env,
        )
    log.info("started %s (attempt %d, pid %d)", job.label, attempt, proc.pid)
    return _Running(job, attempt, staging, proc)


def death_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory or preempted?)" if -returncode == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {returncode} without a result"


def _log_tail(staging: Path, lines: int = 5) -> str:
    try:
        return " | ".join((staging / "worker.log").read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalPool:
    """Run jobs with at most ``workers`` processes whose estimated memory sums below ``memory_budget``."""

    def __init__(self, workers: int, memory_budget: int | None = None, max_attempts: int = 3) -> None:
        self.workers = max(1, workers)
        self.memory_budget = memory_budget or int(available_memory() * 0.8)
        self.max_attempts = max_attempts
        self.launches = 0  # worker processes started (the "conversions ran" counter)
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def _admit(self, pending: list[tuple[Job, int]], running: list[_Running]) -> int | None:
        if len(running) >= self.workers:
            return None
        used = sum(r.job.estimate.memory_bytes for r in running)
        for i, (job, _) in enumerate(pending):
            if not running or used + job.estimate.memory_bytes <= self.memory_budget:
                return i  # the first fitting job; a lone job always runs, however large
        return None

    def run(self, jobs: list[Job], output: Path, on_done: OnDone) -> None:
        pending = [(j, 1) for j in sorted(jobs, key=lambda j: -j.estimate.memory_bytes)]
        running: list[_Running] = []
        try:
            while pending or running:
                while (i := self._admit(pending, running)) is not None:
                    job, attempt = pending.pop(i)
                    running.append(_launch(job, output, attempt, self.threads))
                    self.launches += 1
                time.sleep(POLL_SECONDS)
                for r in [r for r in running if r.proc.poll() is not None]:
                    running.remove(r)
                    self._finish(r, output, pending, on_done)
        finally:
            for r in running:  # Ctrl-C or an error in the coordinator: leave no orphans
                r.proc.kill()
                r.proc.wait()

    def _finish(self, r: _Running, output: Path, pending: list, on_done: OnDone) -> None:
        if r.proc.returncode == 0 and (r.staging / RESULT).is_file():
            cell = commit(output, r.job, r.staging, r.attempt)
            cell["node"] = cell.get("node") or socket.gethostname()
            on_done(r.job, cell)
            return
        reason = death_reason(r.proc.returncode)
        if r.attempt < self.max_attempts:
            log.warning("%s: %s; retrying (attempt %d of %d)", r.job.label, reason, r.attempt + 1,
                        self.max_attempts)
            pending.insert(0, (r.job, r.attempt + 1))
            remove_path(r.staging)
            return
        tail = _log_tail(r.staging)
        error = f"{reason}, {r.attempt} attempts" + (f"; last output: {tail}" if tail else "")
        on_done(r.job, {"key": r.job.key, "job": r.job.to_dict(), "attempts": r.attempt,
                        "node": socket.gethostname(), "record": {"status": "failed", "error": error}})

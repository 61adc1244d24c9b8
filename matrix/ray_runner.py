"""Run the matrix's cells as Ray tasks: ``num_cpus``/``memory`` requests let the cluster place large
conversions on large nodes; Ray retries a task whose worker process died (OOM, preemption, SIGKILL).

Each task exports into a folder on its node and returns it as a tar archive, so results come back to the
driver's output directory even when nodes share no filesystem. The driver checks and commits every cell
exactly as for the local pool. A checkpoint path must be readable on every node (same path).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mobileclip_export.errors import MissingDependencyError, UsageError
from mobileclip_export.matrix.jobs import Job
from mobileclip_export.matrix.local import OnDone
from mobileclip_export.matrix.store import STAGING, commit, new_staging

log = logging.getLogger(__name__)

ATTEMPTS = ".ray-attempts"
INSTALL_HINT = "pip install 'mobileclip-export[matrix]'  (or: pip install ray)"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingDependencyError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def _ray_cell(job_dict: dict[str, Any], staging_hint: str) -> dict[str, Any]:
    """Runs on a Ray worker: export one cell, return the staging folder as tar bytes."""
    import ray

    from mobileclip_export.matrix.worker import run_job

    job = Job.from_dict(job_dict)
    root = Path(staging_hint) if Path(staging_hint).is_dir() else None  # the driver's disk is reachable
    if root is not None:  # count attempts where the driver can read them (Ray retries are otherwise silent)
        with (root / f"{job.cell_id}{ATTEMPTS}").open("a") as f:
            f.write("x")
    staging = Path(tempfile.mkdtemp(prefix=f"{job.cell_id}.ray-", dir=root))
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    try:
        run_job(job, staging, node=node)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(staging, arcname=".")
        return {"tar": buf.getvalue(), "node": node}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class RayRunner:
    """``address``: "auto", "ray://host:port", a head's host:port, or None to use an initialized Ray."""

    def __init__(self, address: str | None, max_attempts: int = 3) -> None:
        self.address = address
        self.max_attempts = max_attempts
        self.launches = 0

    def _connect(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=self.address, log_to_driver=False)
        except ConnectionError as err:
            raise UsageError(
                f"--ray {self.address}: no Ray cluster reachable ({err}); start one (`ray start --head`) "
                "or pass its address, e.g. --ray 10.0.0.5:6379"
            ) from err
        return True

    def run(self, jobs: list[Job], output: Path, on_done: OnDone) -> None:
        ray = import_ray()
        started = self._connect(ray)
        try:
            largest = max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")),
                          default=0)
            # max_calls=1: a fresh worker process per cell, as in the local pool. A reused process carries
            # converters' global name counters from its previous cell into the next artifact's bytes.
            task = ray.remote(max_calls=1)(_ray_cell)
            refs = {}
            for job in jobs:
                mem = job.estimate.memory_bytes
                if largest and mem > largest:
                    log.warning("%s: estimated %.1f GB exceeds the largest node (%.1f GB); asking for that",
                                job.label, mem / 2**30, largest / 2**30)
                    mem = int(largest)
                opts = {"num_cpus": 1, "memory": mem, "max_retries": self.max_attempts - 1,
                        "name": job.cell_id}
                refs[task.options(**opts).remote(job.to_dict(), str(output / STAGING))] = job
                self.launches += 1
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(done[0])
                on_done(job, self._collect(ray, done[0], job, output))
        finally:
            if started:
                ray.shutdown()

    def _collect(self, ray: Any, ref: Any, job: Job, output: Path) -> dict[str, Any]:
        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            error = f"Ray task failed after up to {self.max_attempts} attempts: {type(err).__name__}: {first}"
            return {"key": job.key, "job": job.to_dict(), "node": None, "attempts": self.max_attempts,
                    "record": {"status": "failed", "error": error}}
        counter = output / STAGING / f"{job.cell_id}{ATTEMPTS}"
        attempts = len(counter.read_text()) if counter.is_file() else None  # None: node without our disk
        staging = new_staging(output, job, 1)
        with tarfile.open(fileobj=io.BytesIO(payload["tar"]), mode="r") as tar:
            tar.extractall(staging, filter="data")
        cell = commit(output, job, staging, attempts)
        cell["node"] = payload["node"]
        return cell

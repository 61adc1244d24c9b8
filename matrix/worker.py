"""One cell in one process: export one (model, target, precision, encoder) into a private staging folder.

The worker never touches the store or a bundle: it leaves ``{staging}/out/{model}/`` (a one-artifact bundle
from ``export_model``) and ``{staging}/result.json``; the coordinator checks and commits it. While the
converter runs, ``{staging}/converting`` holds the worker's pid (for monitoring, and for the fault tests that
SIGKILL a worker mid-conversion).

Run as ``python -m mobileclip_export.matrix.worker JOB_JSON STAGING_DIR`` by the local pool; Ray calls
``run_job`` inside its own worker processes.

A worker dies with its coordinator (the pool's pid is in ``COORDINATOR_ENV``): on Linux the kernel SIGKILLs it
when the coordinator dies (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread ends it once it has been
re-parented, and ``result.json`` is never written into a run whose coordinator is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobileclip_export.lifeline import die_with_parent
from mobileclip_export.lifeline import parent_alive as coordinator_alive
from mobileclip_export.matrix.jobs import Job

log = logging.getLogger(__name__)

RESULT = "result.json"
CONVERTING = "converting"
COORDINATOR_ENV = "MOBILECLIP_MATRIX_COORDINATOR"  # the local pool's pid, set for each worker it starts


def _mismatch(job: Job) -> str | None:
    """Why this node must not produce ``job``'s key (other tool versions, other checkpoint), or None."""
    from mobileclip_export.export.registry import get_target
    from mobileclip_export.hashing import file_sha256
    from mobileclip_export.matrix.jobs import job_versions

    here = job_versions(get_target(job.target))
    diff = sorted(k for k in set(here) | set(job.versions) if here.get(k) != job.versions.get(k))
    if diff:
        return "tool versions on this node differ from the plan's: " + ", ".join(
            f"{k} {job.versions.get(k)} != {here.get(k)}" for k in diff
        )
    if job.checkpoint and file_sha256(Path(job.checkpoint)) != job.checkpoint_sha256:
        return f"checkpoint {job.checkpoint} on this node does not have the planned sha256"
    return None


def _marker(staging: Path) -> Any:
    def progress(ev: Any) -> None:
        if ev.stage == "export" and ev.kind == "stage-start":
            (staging / CONVERTING).write_text(str(os.getpid()))
        elif ev.stage == "export" and ev.kind == "stage-end":
            (staging / CONVERTING).unlink(missing_ok=True)

    return progress


def run_job(
    job: Job, staging: Path, node: str | None = None, alive: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Export ``job`` into ``staging``; returns (and writes) the result. Conversion failures are results.
    ``alive`` (local pool): the result is not written once it returns False (the coordinator is gone)."""
    from mobileclip_export.errors import MobileClipExportError
    from mobileclip_export.export.bundle.layout import write_json_atomic
    from mobileclip_export.export.pipeline.api import export_model

    staging.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"key": job.key, "node": node or socket.gethostname(), "pid": os.getpid()}
    problem = _mismatch(job)
    if problem is None:
        try:
            res = export_model(
                job.model, job.target, checkpoint=job.checkpoint, encoders=[job.encoder],
                precision=job.precision, output_dir=staging / "out", options={job.target: job.options},
                reduced=job.reduced, seed=job.seed, progress=_marker(staging),
            )
            rec = res.artifacts[0].to_dict()
            out.update(record=rec, bundle=f"out/{job.model}" if res.bundle_dir else None)
        except MobileClipExportError as err:
            problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        out.update(record={"status": "failed", "error": problem, "seconds": {}}, bundle=None)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if alive is not None and not alive():
        log.error("the coordinator is gone; not writing %s", staging / RESULT)
        return out
    write_json_atomic(staging / RESULT, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    coordinator = int(os.environ.get(COORDINATOR_ENV) or os.getppid())
    die_with_parent(coordinator)
    job = Job.from_dict(json.loads(Path(args[0]).read_text("utf-8")))
    run_job(job, Path(args[1]), alive=lambda: coordinator_alive(coordinator))
    return 0


if __name__ == "__main__":
    sys.exit(main())

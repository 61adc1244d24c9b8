"""``run_matrix``: plan, reuse verified cells, run the rest (local pool or Ray), merge bundles, report."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError
from mobileclip_export.export.bundle.layout import check_output_dir
from mobileclip_export.matrix.estimate import calibrate, estimate
from mobileclip_export.matrix.jobs import Job, MatrixRequest, plan_matrix
from mobileclip_export.matrix.merge import merge_bundle, merge_outputs
from mobileclip_export.matrix.report import row_for, write_report
from mobileclip_export.matrix.store import (
    CELL_JSON,
    CELLS,
    STAGING,
    cell_dir,
    lookup,
    read_cell,
    sweep_staging,
)

log = logging.getLogger(__name__)

LOCK = ".matrix.lock"


@dataclass
class MatrixOutcome:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    reports: dict[str, Path] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


def _lock(output: Path) -> Any:
    """One coordinator per output folder: two would sweep each other's staging."""
    f = (output / LOCK).open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        f.close()
        raise UsageError(f"another matrix run is using {str(output)!r}; wait for it or pick another") from err
    return f


def _calibrated(jobs: list[Job], output: Path) -> list[Job]:
    """Re-estimate times from the cells already in the store (this machine's numbers): a cell's whole work
    (export, verification, guard), fitted per target and precision where the store has that pair (a 4-bit
    Core ML palettization or a Core AI verification takes many times an fp32 ONNX export), else per target,
    else over all cells."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for path in (output / CELLS).glob(f"*/{CELL_JSON}"):  # timings only: no need to re-hash artifacts
        try:
            cell = json.loads(path.read_text("utf-8"))
            seconds = sum(float(v) for v in cell["record"]["seconds"].values())
            sample = (float(cell["job"]["mparams"]), seconds)
            key = (cell["job"]["target"], cell["job"]["precision"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        samples.setdefault(key, []).append(sample)
    if not samples:
        return jobs
    overall = calibrate(s for group in samples.values() for s in group)
    by_target: dict[str, list[tuple[float, float]]] = {}
    for (target, _), group in samples.items():
        by_target.setdefault(target, []).extend(group)
    rates = {k: calibrate(group) for k, group in samples.items()}
    target_rates = {t: calibrate(group) for t, group in by_target.items()}

    def rate(job: Job) -> float:
        return rates.get((job.target, job.precision), target_rates.get(job.target, overall))

    return [replace(j, estimate=estimate(j.mparams, rate(j))) for j in jobs]


def dry_run(req: MatrixRequest, output_dir: str | Path) -> list[dict[str, Any]]:
    """The plan without running it: per cell, the estimate and whether the store already has it."""
    output = Path(output_dir)
    jobs = _calibrated(plan_matrix(req).jobs, output) if output.is_dir() else plan_matrix(req).jobs
    return [
        {"cell": j.cell_id, "mparams": j.mparams, "memory_gb": round(j.estimate.memory_bytes / 2**30, 2),
         "seconds": round(j.estimate.seconds, 1), "reuse": output.is_dir() and lookup(output, j) is not None}
        for j in jobs
    ]


def _runner(workers: int | None, ray_address: str | None, max_attempts: int) -> Any:
    if ray_address is not None:
        from mobileclip_export.matrix.ray_runner import RayRunner, import_ray

        import_ray()  # fail with the install hint before any work
        return RayRunner(None if ray_address == "initialized" else ray_address, max_attempts)
    from mobileclip_export.matrix.local import LocalPool

    return LocalPool(workers or os.cpu_count() or 1, max_attempts=max_attempts)


def run_matrix(
    req: MatrixRequest,
    output_dir: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    max_attempts: int = 3,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> MatrixOutcome:
    """Run every cell of ``req`` not already verified in ``output_dir``'s store; returns the report rows.

    ``ray_address``: None (local pool of ``workers`` processes), "auto", a cluster address, or "initialized"
    (use the Ray the caller already initialized). Cells that fail are rows with status "failed".
    """
    t0 = time.perf_counter()
    runner = _runner(workers, ray_address, max_attempts)  # --ray without Ray fails before any work
    plan = plan_matrix(req)
    output = Path(output_dir)
    check_output_dir(output)
    with _lock(output):
        sweep_staging(output)
        (output / STAGING).mkdir()
        cells: dict[str, tuple[dict[str, Any], bool]] = {}
        todo = []
        for job in plan.jobs:
            hit = lookup(output, job)
            if hit is not None:
                cells[job.key] = (hit, True)
            else:
                todo.append(job)
        log.info("%d cells: %d reused, %d to run", len(plan.jobs), len(cells), len(todo))

        def done(job: Job, cell: dict[str, Any]) -> None:
            cells[job.key] = (cell, False)
            if on_cell is not None:
                on_cell(row_for(cell, False))

        runner.run(_calibrated(todo, output), output, done)
        sweep_staging(output)
        rows = [row_for(*cells[j.key]) for j in plan.jobs]
        summary = {"runner": _runner_label(runner, ray_address), "conversions": runner.launches,
                   "wall_s": round(time.perf_counter() - t0, 3), "skipped": plan.skipped}
        return _finish(output, rows, summary)


def _runner_label(runner: Any, ray_address: str | None) -> str:
    return f"Ray ({ray_address})" if ray_address else f"local pool of {runner.workers} workers"


def _finish(output: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> MatrixOutcome:
    bundles = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["status"] == "verified"]
        folders = [output / CELLS / r["cell"] for r in mine]
        usable = [(f, c) for f in folders if (c := read_cell(f)) is not None]
        path = merge_bundle(output, model, usable)
        if path is not None:
            bundles[model] = path
    summary.update(
        cells=len(rows), verified=sum(r["status"] == "verified" for r in rows),
        failed=sum(r["status"] == "failed" for r in rows), reused=sum(bool(r["reused"]) for r in rows),
    )
    summary.setdefault("conversions", summary["cells"] - summary["reused"])
    out = MatrixOutcome(rows, summary, bundles=bundles)
    out.reports = write_report(output, summary, rows)
    return out


def merge_matrix_outputs(sources: Iterable[Path], output_dir: str | Path) -> MatrixOutcome:
    """The CI-shaped path: merge matrix outputs of separate jobs (one per model) into one store and report."""
    t0 = time.perf_counter()
    output = Path(output_dir)
    check_output_dir(output)
    with _lock(output):
        rows = merge_outputs(sources, output)
        for r in rows:  # a verified row whose cell did not survive the copy is not verified here
            if r["status"] == "verified" and read_cell(output / CELLS / r["cell"]) is None:
                r.update(status="failed", error="cell missing or altered in the merged store")
        summary = {"runner": "merge of " + str(len(rows)) + " rows", "conversions": sum(
            not r["reused"] for r in rows), "wall_s": round(time.perf_counter() - t0, 3), "skipped": []}
        return _finish(output, rows, summary)


__all__ = ["MatrixOutcome", "cell_dir", "dry_run", "merge_matrix_outputs", "run_matrix"]

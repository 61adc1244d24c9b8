"""The content-addressed cell store: ``{output}/cells/{cell_id}/`` = a one-artifact bundle + ``cell.json``.

A cell enters the store only by one rename of a fully checked folder (artifact present, sha256 equal to the
record's, status verified), so a crash at any point leaves either the old cell or the new one, never half of
one. Workers write under ``{output}/.staging/``, which the coordinator sweeps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from mobileclip_export.errors import IntegrityError
from mobileclip_export.export.bundle.layout import remove_path, write_json_atomic
from mobileclip_export.export.bundle.reader import (
    MANIFEST,
    check_sha,
    check_tree,
    real,
    resolve_inside,
    validate_doc,
)
from mobileclip_export.export.bundle.schema import RECORD, AnyValue, Map, Obj, Str
from mobileclip_export.hashing import path_sha256
from mobileclip_export.matrix.jobs import Job
from mobileclip_export.matrix.worker import RESULT

log = logging.getLogger(__name__)

CELLS = "cells"
STAGING = ".staging"
CELL_JSON = "cell.json"
REUSABLE = ("verified",)


def cell_dir(output: Path, job: Job) -> Path:
    return output / CELLS / job.cell_id


def new_staging(output: Path, job: Job, attempt: int) -> Path:
    path = output / STAGING / f"{job.cell_id}.attempt{attempt}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


CELL_SCHEMA = Obj(
    {"key": Str(max_len=256), "record": RECORD, "job": Map(AnyValue()), "manifest": Map(AnyValue())},
    required=("key", "record"),
)


def read_cell(folder: Path) -> dict[str, Any] | None:
    """The cell's record if its artifact is present with the recorded sha256; None otherwise.

    A cell is read like any bundle (another job's output may be merged in): ``cell.json`` validated, the
    record's path resolved inside the cell folder, no symlink in the folder leaving it.
    """
    label = folder / CELL_JSON
    try:
        cell = json.loads(label.read_text("utf-8"))
        validate_doc(label, cell, CELL_SCHEMA)
        if "manifest" in cell:
            validate_doc(f"{label} (manifest)", {**cell["manifest"], "artifacts": []})
        rel = cell["record"].get("path")
        if not rel:
            raise IntegrityError(f"{label}: record.path: no artifact")
        check_tree(folder, real(folder), str(label))
        check_sha(resolve_inside(folder, rel, f"{label}: record.path"), cell["record"].get("sha256"), label)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError, IntegrityError) as err:
        log.warning("cell %s: not usable (%s); it will be re-run", folder.name, err)
        return None
    return cell


def lookup(output: Path, job: Job) -> dict[str, Any] | None:
    """A reusable cell with ``job``'s key (verified, artifact intact), else None."""
    folder = cell_dir(output, job)
    if not folder.is_dir():
        return None
    cell = read_cell(folder)
    if cell is None or cell.get("key") != job.key or cell["record"].get("status") not in REUSABLE:
        return None
    return cell


def commit(output: Path, job: Job, staging: Path, attempts: int | None) -> dict[str, Any]:
    """Turn a worker's staging folder into a store cell (verified ones only), then drop the staging folder."""
    try:
        return _commit(output, job, staging, attempts)
    finally:
        remove_path(staging)


def _commit(output: Path, job: Job, staging: Path, attempts: int | None) -> dict[str, Any]:
    result = json.loads((staging / RESULT).read_text("utf-8"))
    rec = result["record"]
    cell = {"key": job.key, "job": job.to_dict(), "record": rec, "node": result.get("node"),
            "attempts": attempts, "worker_seconds": result.get("seconds")}
    if rec.get("status") not in REUSABLE or not result.get("bundle"):
        return cell
    bundle = staging / result["bundle"]
    artifact = bundle / rec["path"]
    if not artifact.exists() or path_sha256(artifact) != rec.get("sha256"):
        rec.update(status="failed", error="artifact missing or sha256 differs after the worker finished")
        return cell
    manifest = json.loads((bundle / MANIFEST).read_text("utf-8"))
    cell["manifest"] = {k: v for k, v in manifest.items() if k != "artifacts"}
    write_json_atomic(bundle / CELL_JSON, cell)
    _replace_dir(bundle, cell_dir(output, job))
    return cell


def _replace_dir(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:6]}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        remove_path(old)


def sweep_staging(output: Path) -> None:
    shutil.rmtree(output / STAGING, ignore_errors=True)

"""Merge store cells into one bundle per model, and several matrix output folders into one.

A bundle is rebuilt in a hidden temp folder from verified cells only: each artifact is re-hashed and must
equal its record's sha256 before the manifest may list it; the manifest is written last and the folder
renamed into place, so no reader ever sees a manifest listing a missing or altered artifact.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mobileclip_export.errors import IntegrityError, UsageError
from mobileclip_export.export.bundle.layout import write_json_atomic
from mobileclip_export.export.bundle.reader import MANIFEST
from mobileclip_export.export.bundle.schema import (
    NAME,
    Bool,
    Int,
    List,
    Nullable,
    Num,
    Obj,
    SchemaError,
    Str,
    validate,
)
from mobileclip_export.hashing import path_sha256
from mobileclip_export.matrix.store import CELL_JSON, CELLS, REUSABLE, _replace_dir, read_cell

log = logging.getLogger(__name__)

BUNDLES = "bundles"


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=_link_file, dirs_exist_ok=True)
    else:
        _link_file(src, dest)


def _link_file(src: Any, dest: Any) -> None:
    try:
        os.link(src, dest)  # same filesystem: no copy of a multi-GB artifact
    except OSError:
        shutil.copy2(src, dest)


def _add_cell(tmp: Path, folder: Path, cell: dict[str, Any]) -> dict[str, Any] | None:
    rec = cell["record"]
    for item in folder.iterdir():
        if item.name in (MANIFEST, CELL_JSON):
            continue
        for src in [item] if item.is_file() else [p for p in item.iterdir()]:
            dest = tmp / src.relative_to(folder)
            if not dest.exists():
                _link_or_copy(src, dest)
    if path_sha256(tmp / posixpath.normpath(rec["path"])) != rec["sha256"]:  # validated by read_cell
        log.error("%s: artifact differs from its record after the merge; not listed", rec["path"])
        return None
    return {**rec, "details": {**rec.get("details", {}), "matrix_cell": cell["key"]}}


def merge_bundle(output: Path, model: str, cells: list[tuple[Path, dict[str, Any]]]) -> Path | None:
    """``{output}/bundles/{model}/`` from ``cells`` (store folder, cell dict); None when none is usable."""
    good = [(f, c) for f, c in cells if c["record"].get("status") in REUSABLE and "manifest" in c]
    if not good:
        return None
    try:
        validate(NAME, model, "model")  # the folder name under bundles/: one plain path component
    except SchemaError as err:
        raise IntegrityError(f"matrix rows: {err}") from err
    (output / BUNDLES).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model}.merge-", dir=output / BUNDLES))
    try:
        records = [r for f, c in good if (r := _add_cell(tmp, f, c)) is not None]
        base = dict(good[0][1]["manifest"])
        versions: dict[str, str] = {}
        for _, c in good:
            versions.update(c["manifest"].get("tool_versions", {}))
        base.update(
            tool_versions=versions, artifacts=records, ok=True,
            export_args={**base.get("export_args", {}), "targets": sorted({r["target"] for r in records}),
                         "encoders": sorted({r["encoder"] for r in records}), "precision": None,
                         "matrix_cells": [c["key"] for _, c in good]},
        )
        write_json_atomic(tmp / MANIFEST, base)
        os.chmod(tmp, 0o755)
        final = output / BUNDLES / model
        _replace_dir(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_outputs(sources: Iterable[Path], output: Path) -> list[dict[str, Any]]:
    """Copy the intact cells of other matrix outputs (e.g. one per CI job) into ``output``'s store.

    Returns the rows of the sources' matrix.json (failed cells have no store folder but keep their row).
    """
    rows: dict[str, dict[str, Any]] = {}  # by cell key: a cell in two sources is one row, verified wins
    for src in map(Path, sources):
        for row in _read_rows(src):
            if row["key"] not in rows or rows[row["key"]]["status"] != "verified":
                rows[row["key"]] = row
        for folder in sorted((src / CELLS).glob("*")):
            dest = output / CELLS / folder.name
            if folder.is_symlink() or dest.exists() or read_cell(folder) is None:
                continue  # read_cell: record and every file inside the cell folder
            tmp = output / CELLS / f".{folder.name}.copy"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp, symlinks=True)  # links stay links; read_cell checks them again
            os.replace(tmp, dest)
    return list(rows.values())


ROW = Obj(
    {"key": Str(max_len=256), "model": NAME, "cell": NAME, "status": Str(max_len=32), "reused": Bool(),
     "cosine": Nullable(Num()), "max_abs_diff": Nullable(Num()), "bytes": Nullable(Int(0, 2**53))},
    required=("key", "model", "cell", "status"),
)  # fmt: skip
MATRIX_JSON = Obj({"rows": List(ROW)}, required=("rows",))


def _read_rows(src: Path) -> list[dict[str, Any]]:
    """The rows of another matrix output's matrix.json, validated (model and cell name folders we write)."""
    report = src / "matrix.json"
    if not report.is_file():
        raise UsageError(f"--merge {str(src)!r}: no matrix.json there (not a matrix output folder)")
    try:
        doc = json.loads(report.read_text("utf-8"))
        validate(MATRIX_JSON, doc)
    except (OSError, ValueError, RecursionError) as err:
        raise IntegrityError(f"{report}: {err}") from err
    return doc["rows"]

"""The one bundle reader: every command that opens a bundle (check, predict, bench, matrix merge, export
--force) finds, validates and resolves it here.

A bundle is untrusted input (a CI artifact, a colleague's folder, a download), so before any field is used:
- the manifest is found one way (``find_manifest``);
- its ``schema_version`` is read and a newer major version refused, naming both;
- it is validated against the declared schema (``schema.MANIFEST_V1``), naming the first bad field;
- every path it lists resolves inside the bundle root: relative, no ``..`` that climbs out, symlinks resolved
  and refused when they leave the root (also inside directory artifacts); no field names another place to
  read;
- the sha256 check of a file against its manifest entry lives here, once (``check_sha``).
Refusals are ``IntegrityError`` (exit 1) naming the manifest and the field; no manifest at all is a
``UsageError`` (exit 2).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobileclip_export.errors import IntegrityError, UsageError
from mobileclip_export.export.bundle.manifest import SCHEMA_VERSION
from mobileclip_export.export.bundle.schema import (
    MANIFEST_V1,
    SCHEMA_MAJOR,
    SchemaError,
    Spec,
    relpath_problem,
    schema_version,
    validate,
)
from mobileclip_export.hashing import path_sha256

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a real manifest is tens of kB; refuse to parse a huge file


def find_manifest(folder: str | Path, model: str | None = None, *, missing_ok: bool = False) -> Path | None:
    """The one lookup: ``folder/manifest.json``, else the one ``folder/*/manifest.json`` (with several and
    ``model`` given, ``folder/<model>/manifest.json``). UsageError (or None with ``missing_ok``) otherwise."""
    folder = Path(folder)
    if _has_manifest(folder):
        return folder / MANIFEST
    found = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}") if _has_manifest(p.parent))
    if model is not None and len(found) > 1:
        found = [p for p in found if p.name == model]
    if len(found) == 1:
        return found[0] / MANIFEST
    if missing_ok:
        return None
    if not folder.is_dir():
        raise UsageError(f"no {MANIFEST}: the bundle folder {str(folder)!r} does not exist")
    where = "several: " + ", ".join(str(p) for p in found) if found else "none"
    raise UsageError(
        f"no {MANIFEST} for one bundle under {str(folder)!r} (looked in the folder and one level down; "
        f"found {where}); pass the bundle folder (the one holding {MANIFEST})"
    )


def _has_manifest(folder: Path) -> bool:
    """Exact-case match (a Core ML package's ``Manifest.json`` is not ours on case-insensitive disks)."""
    try:
        return MANIFEST in os.listdir(folder) and (folder / MANIFEST).is_file()
    except OSError:
        return False


def load_manifest(path: Path) -> dict[str, Any]:
    """Parsed, version-checked and schema-validated manifest at ``path`` (IntegrityError naming the field)."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{path}: {size} bytes, not a manifest (at most {MAX_MANIFEST_BYTES})")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise IntegrityError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except (ValueError, RecursionError) as err:
        raise IntegrityError(f"{path}: not valid JSON ({str(err) or type(err).__name__})") from err
    except OSError as err:
        raise IntegrityError(f"{path}: unreadable ({err.strerror or err})") from err
    validate_doc(path, doc, MANIFEST_V1)
    return doc


def validate_doc(path: Path | str, doc: Any, spec: Spec = MANIFEST_V1) -> None:
    """Version first (a newer major may have another shape), then the declared schema."""
    try:
        version = schema_version(doc)
        if version.major > SCHEMA_MAJOR:
            raise IntegrityError(
                f"{path}: schema_version {version.text} is newer than this mobileclip-export reads "
                f"(major {SCHEMA_MAJOR}; it writes {SCHEMA_VERSION}); upgrade mobileclip-export to open it"
            )
        validate(spec, doc)
    except SchemaError as err:
        raise IntegrityError(f"{path}: {err}") from err


def real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def inside(path: Path, root_real: Path) -> bool:
    return path == root_real or root_real in path.parents


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` after proving it stays inside ``root``: lexically (no absolute path, no escaping ``..``)
    and on disk (every symlink on the way, and inside a directory, resolves inside the root)."""
    if not isinstance(rel, str):
        raise IntegrityError(f"{what}: expected a path string, got {rel!r}")
    problem = relpath_problem(rel)
    if problem:
        raise IntegrityError(f"{what}: {rel!r} {problem}")
    root_real = real(root)
    path = root / posixpath.normpath(rel)
    target = real(path)
    if not inside(target, root_real):
        raise IntegrityError(f"{what}: {rel!r} resolves to {target}, outside the bundle folder {root_real}")
    if path.is_dir():
        check_tree(path, root_real, what)
    return path


def check_tree(folder: Path, root_real: Path, what: str) -> None:
    """IntegrityError when a symlink anywhere under ``folder`` resolves outside ``root_real``."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            if p.is_symlink() and not inside(real(p), root_real):
                raise IntegrityError(f"{what}: {p} is a symlink leaving the bundle folder {root_real}")


def sha_problem(path: Path, expected: str | None) -> str | None:
    """Why ``path`` does not match its manifest entry (missing, no sha256, differs), or None."""
    if not path.exists():
        return "missing"
    if expected is None:
        return "no sha256 in the manifest"
    if path_sha256(path) != expected:
        return "sha256 differs from the manifest (file modified or corrupted)"
    return None


def check_sha(path: Path, expected: str | None, manifest_path: Path | str = MANIFEST) -> None:
    """The one sha256 check before a file is used: IntegrityError naming ``path`` unless it matches."""
    problem = sha_problem(path, expected)
    if problem is None:
        return
    if problem == "missing":
        raise IntegrityError(f"{path}: missing (listed in {manifest_path})")
    if expected is None:
        raise IntegrityError(f"{path}: {manifest_path} records no sha256 for it; cannot vouch for the file")
    raise IntegrityError(
        f"{path}: does not match its manifest (sha256 differs from the entry in {manifest_path}: the "
        f"file was modified or corrupted); refusing to use it. Re-export it; "
        f"`mobileclip-export check --bundle {Path(manifest_path).parent}` lists every changed file"
    )


@dataclass
class BundleReader:
    """A validated bundle: ``root`` (as given), ``manifest_path``, the manifest dict (schema-checked)."""

    root: Path
    manifest_path: Path
    manifest: dict[str, Any]

    def resolve(self, rel: str, what: str) -> Path:
        return resolve_inside(self.root, rel, f"{self.manifest_path}: {what}")

    def records(self) -> list[dict[str, Any]]:
        return list(self.manifest["artifacts"])

    def artifact(self, rec: Mapping[str, Any]) -> Path:
        """The record's artifact, resolved inside the bundle and sha256-checked (IntegrityError otherwise)."""
        path = self.resolve(rec["path"], f"artifact {rec['path']!r}")
        check_sha(path, rec.get("sha256"), self.manifest_path)
        return path

    def listed(self) -> dict[str, str | None]:
        """Every file the manifest vouches for: bundle-relative path -> sha256 (artifacts first)."""
        out: dict[str, str | None] = {a["path"]: a.get("sha256") for a in self.records() if a.get("path")}
        out.update(self.manifest.get("files", {}))
        return out

    def problems(self) -> list[str]:
        """One line per listed file that is missing or altered (naming the file)."""
        out = []
        for rel, sha in self.listed().items():
            problem = sha_problem(self.resolve(rel, rel), sha)
            if problem:
                out.append(f"{rel}: {problem}")
        return out

    def _paths(self) -> Iterator[tuple[str, str]]:
        """(field, path) of every path field, for the on-disk check at open."""
        for i, rec in enumerate(self.records()):
            if rec.get("path"):
                yield f"artifacts[{i}].path", rec["path"]
            for j, name in enumerate((rec.get("details") or {}).get("tokenizer_files", [])):
                yield f"artifacts[{i}].details.tokenizer_files[{j}]", name
        for rel in self.manifest.get("files", {}):
            yield f"files[{rel!r}]", rel
        if "index" in (self.manifest.get("golden") or {}):
            yield "golden.index", self.manifest["golden"]["index"]


def read_bundle_at(manifest_path: Path) -> BundleReader:
    """The bundle whose manifest is ``manifest_path``: validated, every listed path resolved inside it."""
    root = manifest_path.parent
    if not inside(real(manifest_path), real(root)):
        raise IntegrityError(f"{manifest_path}: a symlink leaving the bundle folder; refusing to read it")
    reader = BundleReader(root, manifest_path, load_manifest(manifest_path))
    for what, rel in reader._paths():
        reader.resolve(rel, what)
    return reader


def open_bundle(folder: str | Path, model: str | None = None) -> BundleReader:
    """``find_manifest`` then ``read_bundle_at``: what ``check``, ``predict`` and ``bench`` call."""
    path = find_manifest(folder, model)
    assert path is not None  # find_manifest raises unless missing_ok
    return read_bundle_at(path)


def require_intact(artifact: str | Path) -> dict[str, Any] | None:
    """The manifest record of ``artifact`` after its sha256 check (IntegrityError if altered); None for a
    file outside any bundle (its folder or the one above holds no manifest) or not listed in it."""
    artifact = Path(artifact)
    for folder in list(artifact.parents)[:2]:
        path = find_manifest(folder, missing_ok=True)
        if path is None:
            continue
        reader = read_bundle_at(path)
        try:
            rel = artifact.resolve().relative_to(reader.root.resolve()).as_posix()
        except ValueError:  # a manifest one level down, of another bundle
            continue
        rec = next((a for a in reader.records() if a.get("path") == rel), None)
        if rec is not None:
            reader.artifact(rec)
        return rec
    return None

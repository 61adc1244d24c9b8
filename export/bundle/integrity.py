"""Bundle integrity: sha256 of every file the manifest vouches for, and the check that refuses altered ones.

The manifest records each artifact's sha256 (``artifacts[].sha256``) and, under ``files``, the sha256 of every
other file of the bundle (tokenizer files, golden vectors, model card). ``bench``/``predict`` call
``require_intact`` before loading an artifact; ``check`` calls ``verify_hashes`` on the whole bundle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mobileclip_export.errors import IntegrityError
from mobileclip_export.hashing import path_sha256

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def file_hashes(root: Path, skip: Iterable[str]) -> dict[str, str]:
    """sha256 of every file under ``root`` outside the ``skip`` paths (artifacts, which are hashed whole)."""
    skipped = [Path(root, s) for s in skip]
    out = {}
    for p in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in p.relative_to(root).parts)  # staging leftovers
        if hidden or not p.is_file() or p.name == MANIFEST or any(p == s or s in p.parents for s in skipped):
            continue
        out[p.relative_to(root).as_posix()] = path_sha256(p)
    return out


def verify_hashes(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems (one line each, naming the file): missing or altered artifacts and bundle files."""
    problems = []
    expected = {a["path"]: a.get("sha256") for a in manifest.get("artifacts", []) if a.get("path")}
    expected.update(manifest.get("files", {}))
    for rel, sha in expected.items():
        p = bundle / rel
        if not p.exists():
            problems.append(f"{rel}: missing")
        elif sha is None:
            problems.append(f"{rel}: no sha256 in the manifest")
        elif path_sha256(p) != sha:
            problems.append(f"{rel}: sha256 differs from the manifest (file modified or corrupted)")
    return problems


def find_manifest(artifact: Path) -> Path | None:
    """The manifest.json of the bundle holding ``artifact`` (it sits 1-2 folders up), or None."""
    for parent in list(artifact.resolve().parents)[:3]:
        if (parent / MANIFEST).is_file():
            return parent / MANIFEST
    return None


def check_artifact(path: Path, expected_sha256: str | None, manifest_path: Path | str = MANIFEST) -> None:
    """IntegrityError naming ``path`` when its sha256 is not the one the manifest records."""
    if expected_sha256 is None:
        raise IntegrityError(f"{path}: {manifest_path} records no sha256 for it; cannot vouch for the file")
    if not path.exists():
        raise IntegrityError(f"{path}: missing (listed in {manifest_path})")
    if path_sha256(path) != expected_sha256:
        raise IntegrityError(
            f"{path}: does not match its manifest (sha256 differs from the entry in {manifest_path}: the "
            f"file was modified or corrupted); refusing to use it. Re-export it; "
            f"`mobileclip-export check --bundle {Path(manifest_path).parent}` lists every changed file"
        )


def require_intact(artifact: str | Path) -> dict[str, Any] | None:
    """Refuse (IntegrityError) an artifact whose bundle manifest gives another sha256; for bench/predict.

    Returns the artifact's manifest record, or None for a file outside any bundle (nothing to check).
    """
    artifact = Path(artifact)
    manifest_path = find_manifest(artifact)
    if manifest_path is None:
        return None
    manifest = json.loads(manifest_path.read_text("utf-8"))
    rel = artifact.resolve().relative_to(manifest_path.parent.resolve()).as_posix()
    rec = next((a for a in manifest.get("artifacts", []) if a.get("path") == rel), None)
    if rec is None:
        return None
    check_artifact(artifact, rec.get("sha256"), manifest_path)
    return rec


def _bundle_manifest(bundle: Path) -> Path:
    from mobileclip_export.errors import UsageError

    found = [p for p in (bundle / MANIFEST, *sorted(bundle.glob(f"*/{MANIFEST}"))) if p.is_file()]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UsageError(
            f"{what} {MANIFEST} under {str(bundle)!r}; pass the bundle dir (it holds {MANIFEST})"
        )
    return found[0]


def check_bundle(bundle: str | Path, parity: bool = True) -> dict[str, Any]:
    """Hashes of every file the manifest lists, then (``parity``) the golden vectors re-run here."""
    manifest_path = _bundle_manifest(Path(bundle))
    root = manifest_path.parent
    manifest = json.loads(manifest_path.read_text("utf-8"))
    problems = verify_hashes(root, manifest)
    n_files = len([a for a in manifest.get("artifacts", []) if a.get("path")]) + len(
        manifest.get("files", {})
    )
    report: dict[str, Any] = {"bundle": str(root), "n_files": n_files, "parity": {}}
    golden_index = (manifest.get("golden") or {}).get("index")
    if parity and golden_index and not any(p.startswith(golden_index) for p in problems):
        from mobileclip_export.export.bundle.golden import recheck

        altered = {p.split(":")[0] for p in problems}
        runs = recheck(root, manifest, skip=altered)
        report["parity"] = runs
        problems += [
            f"{k}: golden vectors: {'; '.join(r['problems'])}" for k, r in runs.items() if r["problems"]
        ]
    elif parity:
        report["parity_note"] = "no golden vectors in this bundle (or their index changed): parity not re-run"
    report["problems"] = problems
    report["ok"] = not problems
    return report

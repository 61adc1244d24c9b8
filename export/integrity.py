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

from mobileclip_export.errors import UsageError
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


def require_intact(artifact: str | Path) -> dict[str, Any] | None:
    """Raise UsageError if ``artifact`` belongs to a bundle whose manifest gives another sha256.

    Returns the artifact's manifest record (None for a loose file outside any bundle: nothing to check).
    """
    artifact = Path(artifact)
    manifest_path = find_manifest(artifact)
    if manifest_path is None:
        return None
    root = manifest_path.parent
    manifest = json.loads(manifest_path.read_text("utf-8"))
    rel = artifact.resolve().relative_to(root.resolve()).as_posix()
    rec = next((a for a in manifest.get("artifacts", []) if a.get("path") == rel), None)
    if rec is None:
        return None
    if path_sha256(artifact) != rec.get("sha256"):
        raise UsageError(
            f"{artifact}: sha256 does not match its entry in {manifest_path} (the file was modified or "
            f"corrupted); re-export it, or run `mobileclip-export check --bundle {root}`"
        )
    return rec

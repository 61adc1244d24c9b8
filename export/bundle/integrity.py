"""Bundle integrity: sha256 of every file the manifest vouches for (written at export), and ``check``.

The manifest records each artifact's sha256 (``artifacts[].sha256``) and, under ``files``, the sha256 of every
other file of the bundle (tokenizer files, golden vectors, model card). Reading them back (validation, paths
kept inside the bundle, the sha256 comparison) is the bundle reader's job (``reader.py``); ``check`` runs it
over the whole bundle, then re-runs the golden vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mobileclip_export.export.bundle.reader import MANIFEST, open_bundle, require_intact
from mobileclip_export.hashing import path_sha256

log = logging.getLogger(__name__)

__all__ = ["check_bundle", "file_hashes", "require_intact"]


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


def check_bundle(bundle: str | Path, parity: bool = True) -> dict[str, Any]:
    """Hashes of every file the manifest lists, then (``parity``) the golden vectors re-run here."""
    reader = open_bundle(bundle)  # validated; every listed path inside the bundle
    root, manifest = reader.root, reader.manifest
    problems = reader.problems()
    n_files = len(reader.listed())
    report: dict[str, Any] = {"bundle": str(root), "n_files": n_files, "parity": {}}
    golden_index = (manifest.get("golden") or {}).get("index")
    if parity and golden_index and not any(p.startswith(golden_index) for p in problems):
        report["parity"] = _recheck(root, manifest, golden_index, problems)
    elif parity:
        report["parity_note"] = "no golden vectors in this bundle (or their index changed): parity not re-run"
    report["problems"] = problems
    report["ok"] = not problems
    return report


def _recheck(root: Path, manifest: dict[str, Any], index: str, problems: list[str]) -> dict[str, Any]:
    """Golden vectors re-run; their problems appended to ``problems`` (a malformed index is one of them)."""
    from mobileclip_export.export.bundle.golden import recheck

    altered = {p.split(":")[0] for p in problems}
    try:
        runs = recheck(root, manifest, skip=altered)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        # the index is hashed, but a hostile bundle can rewrite both; its shape is untrusted too
        problems.append(f"{index}: malformed golden index ({type(err).__name__}: {err})")
        return {}
    problems += [f"{k}: golden vectors: {'; '.join(r['problems'])}" for k, r in runs.items() if r["problems"]]
    return runs

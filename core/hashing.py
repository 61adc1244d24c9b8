"""Content hashes for checkpoints, vocabularies and artifacts (one implementation for every subpackage)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints can be GBs)."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory artifact (.mlpackage, .aimodel): relative paths + contents."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        _update(h, p)
    return h.hexdigest()


def _update(h: Any, path: Path) -> None:  # h: a hashlib object
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)

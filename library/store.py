"""The on-disk library: a manifest, append-only fp16 shards with their row files, and a commit log.

Layout of a library folder (documented for other languages in docs/library-format.md)::

    library.json          format + version, model and bundle identity, dim, dtype (written once, atomically)
    log.jsonl             the commit log: one JSON object per line, appended and fsynced after its files
    shards/000000.npy     float16 [n, D], L2-normalized rows (numpy .npy v1, C order, little endian)

Row i of shard k is described by row i of the log's ``add`` record for shard k, [path, size, mtime_ns,
sha256], with id ``first_id + i``.

A shard counts only once its ``add`` line is in the log, so a run killed at any point leaves either a
committed shard or files the next run overwrites; a torn last log line (killed mid-write) is ignored and cut.
Rows are never rewritten: a changed or deleted file tombstones its id in a later log line.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import IntegrityError, UsageError

FORMAT = "mobileclip-export.library"
VERSION = 1
MANIFEST = "library.json"
LOG = "log.jsonl"
SHARDS = "shards"
LOCK = ".lock"
DTYPE = "float16"


@dataclass(frozen=True)
class Entry:
    """The live row of one image file (a view; ``Entries`` stores it column-wise)."""

    id: int
    size: int
    mtime_ns: int
    sha256: str


class Entries:
    """path -> live row, stored as path -> id plus id-indexed numpy columns (size, mtime, sha256 bytes):
    ~150 bytes a file instead of ~500 as Python objects: the path table is all that grows with a folder."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._size = np.zeros(1024, np.int64)
        self._mtime = np.zeros(1024, np.int64)
        self._sha = np.zeros((1024, 32), np.uint8)

    def _grow(self, n: int) -> None:
        if n > len(self._size):
            cap = max(n, 2 * len(self._size))
            self._size, self._mtime = np.resize(self._size, cap), np.resize(self._mtime, cap)
            self._sha = np.resize(self._sha, (cap, 32))

    def set(self, path: str, row_id: int, size: int, mtime_ns: int, sha256: str) -> None:
        self._grow(row_id + 1)
        self._ids[path] = row_id
        self.touch(path, size, mtime_ns)
        self._sha[row_id] = np.frombuffer(bytes.fromhex(sha256), np.uint8)

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        i = self._ids[path]
        self._size[i], self._mtime[i] = size, mtime_ns

    def get(self, path: str) -> Entry | None:
        i = self._ids.get(path)
        if i is None:
            return None
        return Entry(i, int(self._size[i]), int(self._mtime[i]), self._sha[i].tobytes().hex())

    def pop_id(self, path: str) -> int | None:
        return self._ids.pop(path, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class State:
    """The library replayed from its log: live rows by path, tombstones, skipped files."""

    entries: Entries = field(default_factory=Entries)
    deleted: set[int] = field(default_factory=set)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {size, mtime_ns, error}
    shards: list[dict[str, Any]] = field(default_factory=list)  # per add record: shard, first_id, n
    next_id: int = 0

    def apply(self, rec: dict[str, Any]) -> None:
        op = rec.get("op")
        if op == "add":
            self._apply_add(rec)
        elif op == "delete":
            for path in rec["paths"]:
                self._drop(path)
                self.skipped.pop(path, None)
        elif op != "run":
            raise IntegrityError(f"library log: unknown op {op!r}")

    def _drop(self, path: str) -> None:
        old = self.entries.pop_id(path)
        if old is not None:
            self.deleted.add(old)

    def _apply_add(self, rec: dict[str, Any]) -> None:
        if rec["first_id"] != self.next_id or rec["shard"] != len(self.shards):
            raise IntegrityError(f"library log: shard {rec['shard']} is out of sequence")
        self.shards.append({"shard": rec["shard"], "first_id": rec["first_id"], "n": len(rec["rows"])})
        for i, (path, size, mtime_ns, sha) in enumerate(rec["rows"]):
            self._drop(path)
            self.skipped.pop(path, None)
            self.entries.set(path, rec["first_id"] + i, size, mtime_ns, sha)
        self.next_id += len(rec["rows"])
        for path, size, mtime_ns in rec.get("touched", []):  # same content, new size/mtime metadata
            self.entries.touch(path, size, mtime_ns)
        for item in rec.get("skipped", []):
            self._drop(item["path"])
            self.skipped[item["path"]] = item


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, then rename over ``path``: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def npy_bytes(matrix: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(matrix, dtype="<f2"), allow_pickle=False)
    return buf.getvalue()


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, byte length of the complete lines); a torn or unparsable last line is not a record."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    records, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if good + len(line) == len(data):
                break  # the last line, torn by a kill: it never committed
            raise IntegrityError(f"{path}: line {len(records) + 1} is not JSON: {err}") from err
        good += len(line)
    return records, good


class Library:
    """A library folder, opened for reading (``Library(path)``) or indexing (``Library.create_or_open``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mf = self.root / MANIFEST
        if not mf.is_file():
            raise UsageError(
                f"--index {str(self.root)!r} is not a library (no {MANIFEST}); build one with index"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{mf} is not readable: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise UsageError(f"{mf} is not a {FORMAT} manifest")
        if self.manifest.get("version") != VERSION:
            raise UsageError(
                f"{mf}: library format version {self.manifest.get('version')!r}; this tool reads {VERSION}"
            )
        self.dim = int(self.manifest["dim"])
        self._lock_fd: int | None = None
        self.state = self._replay()

    def _replay(self) -> State:
        state = State()
        for n, rec in enumerate(read_log(self.root / LOG)[0], 1):
            try:
                state.apply(rec)
            except (KeyError, TypeError, ValueError, AttributeError) as err:  # a hand-edited or foreign log
                raise IntegrityError(f"{self.root / LOG}: record {n} is malformed ({err!r})") from err
        return state

    @classmethod
    def create_or_open(cls, root: str | Path, manifest: dict[str, Any]) -> Library:
        """Open ``root`` for writing (an exclusive lock), creating it with ``manifest`` if new."""
        root = Path(root)
        if root.exists() and not (root / MANIFEST).is_file():
            if not root.is_dir() or any(root.iterdir()):
                raise UsageError(
                    f"--out {str(root)!r} exists and is not a library; choose a new or empty folder"
                )
        try:
            (root / SHARDS).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create library folder {str(root)!r}: {err}") from err
        fd = _lock(root)
        if not (root / MANIFEST).is_file():
            write_atomic(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
            _fsync_dir(root)
        lib = cls(root)
        lib._lock_fd = fd
        lib._repair()
        return lib

    def _repair(self) -> None:
        """Cut a torn last log line; remove shard files no log line committed (a killed run's leftovers)."""
        log = self.root / LOG
        _, good = read_log(log)
        if log.is_file() and log.stat().st_size != good:
            with log.open("r+b") as f:
                f.truncate(good)
        committed = {f"{r['shard']:06d}.npy" for r in self.state.shards}
        for p in (self.root / SHARDS).iterdir():
            if p.name not in committed and p.is_file():
                p.unlink()

    def append(self, rec: dict[str, Any]) -> None:
        """Commit one log record (after the files it names are on disk), then apply it."""
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        with (self.root / LOG).open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.state.apply(rec)

    def commit_shard(self, vectors: np.ndarray, rows: list[list[Any]], **extra: Any) -> None:
        """Write shard files atomically, then its ``add`` line: rows are [path, size, mtime_ns, sha256]."""
        if vectors.shape != (len(rows), self.dim):
            raise ValueError(f"shard of shape {vectors.shape} for {len(rows)} rows of dim {self.dim}")
        k, first = len(self.state.shards), self.state.next_id
        data = npy_bytes(vectors)
        write_atomic(self.root / SHARDS / f"{k:06d}.npy", data)
        _fsync_dir(self.root / SHARDS)
        digest = hashlib.sha256(data).hexdigest()
        self.append({"op": "add", "shard": k, "first_id": first, "npy_sha256": digest, "rows": rows, **extra})

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------------------
    def shard_matrix(self, rec: dict[str, Any]) -> np.ndarray:
        """One committed shard's float16 [n, D] (memory-mapped), shape-checked against its log record."""
        path = self.root / SHARDS / f"{int(rec['shard']):06d}.npy"
        try:
            with path.open("rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise ValueError("not a .npy file")
            m = np.load(path, mmap_mode="c", allow_pickle=False)  # "c": writable view, never written back
        except (OSError, ValueError) as err:
            raise IntegrityError(f"library shard {path} is unreadable: {err}") from err
        if m.dtype != np.float16 or m.shape != (rec["n"], self.dim):
            raise IntegrityError(f"library shard {path}: {m.dtype} {m.shape}, log says {rec['n']} rows")
        return m

    def iter_shards(self) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
        """(log record, float16 matrix, live mask) per committed shard."""
        dead = np.fromiter(self.state.deleted, np.int64, len(self.state.deleted))
        for rec in self.state.shards:
            ids = np.arange(rec["first_id"], rec["first_id"] + rec["n"])
            live = ~np.isin(ids, dead) if len(dead) else np.ones(len(ids), bool)
            yield rec, self.shard_matrix(rec), live

    def rows(self, row_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The metadata of ``row_ids``, read back from their log records (not kept in memory)."""
        want, found = set(row_ids), {}
        for rec in read_log(self.root / LOG)[0]:
            if rec.get("op") != "add":
                continue
            first = rec["first_id"]
            for i in [i for i in want if first <= i < first + len(rec["rows"])]:
                path, size, mtime_ns, sha = rec["rows"][i - first]
                found[i] = {"id": i, "path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha}
        return found

    @property
    def live_count(self) -> int:
        return len(self.state.entries)


def _lock(root: Path) -> int:
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise UsageError(f"library {str(root)!r} is being written by another index run") from err
    return fd

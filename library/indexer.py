"""``index``: embed a folder of images into a library, streaming, resumable and incremental.

The folder is walked in a fixed order (sorted names, depth first; hidden entries, symlinks and the library
itself are not followed). Files whose size and mtime match their row are skipped; others are read once,
hashed, and embedded in batches unless their sha256 is unchanged. Work is committed one shard at a time
(``shard_rows`` files each), so a killed run redoes at most one shard, and a resumed run writes the same
shards, byte for byte, as an uninterrupted one: a shard's files and their batches are the same in both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import UsageError
from mobileclip_export.library import identity as I
from mobileclip_export.library.store import DTYPE, FORMAT, VERSION, Library, State
from mobileclip_export.library.stream import (
    DEFAULT_BATCH,
    ProgressBar,
    batched,
    embed_stream,
    normalized_fp16,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic")
SHARD_ROWS = 512  # files per commit: a kill loses at most this much work


@dataclass
class Item:
    """One file to (re)embed; ``size``/``mtime_ns``/``sha256`` are filled from the open file when read."""

    path: str
    size: int
    mtime_ns: int
    old_sha256: str | None = None
    sha256: str = ""


@dataclass
class Plan:
    """Counts from a first walk; the work itself is walked again lazily (``work_items``): no list of files."""

    work: int = 0
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    still_skipped: int = 0


def scan(root: Path, exclude: Path | None = None) -> Iterator[tuple[str, int, int]]:
    """(posix path relative to ``root``, size, mtime_ns) of every image file, in a fixed order."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or p.is_symlink():
                continue
            try:
                st = p.stat()
            except OSError:
                continue  # vanished since the listing
            yield p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns


def _classify_file(state: State, rel: str, size: int, mtime_ns: int) -> Item | str:
    old, skipped = state.entries.get(rel), state.skipped.get(rel)
    if old is not None and (old.size, old.mtime_ns) == (size, mtime_ns):
        return "unchanged"
    if skipped is not None and (skipped["size"], skipped["mtime_ns"]) == (size, mtime_ns):
        return "still_skipped"  # the same unreadable bytes: listed again, not retried
    return Item(rel, size, mtime_ns, old.sha256 if old else None)


def make_plan(root: Path, state: State, exclude: Path | None) -> Plan:
    plan, seen = Plan(), set()
    for rel, size, mtime_ns in scan(root, exclude):
        seen.add(rel)
        kind = _classify_file(state, rel, size, mtime_ns)
        if isinstance(kind, Item):
            plan.work += 1
        else:
            setattr(plan, kind, getattr(plan, kind) + 1)
    plan.deleted = sorted(p for p in [*state.entries, *state.skipped] if p not in seen)
    return plan


def work_items(root: Path, state: State, exclude: Path | None) -> Iterator[Item]:
    """The files to (re)embed, in walk order, classified as they are reached."""
    for rel, size, mtime_ns in scan(root, exclude):
        kind = _classify_file(state, rel, size, mtime_ns)
        if isinstance(kind, Item):
            yield kind


class _Loader:
    """Reads a file once: size/mtime from the open descriptor, sha256 of the bytes, pixels from the bytes."""

    def __init__(self, root: Path, pre: Any, max_pixels: int | None = None):
        self.root, self.pre, self.max_pixels = root, pre, max_pixels

    def read(self, item: Item) -> bytes:
        with open(self.root / item.path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
        item.sha256 = hashlib.sha256(data).hexdigest()
        return data

    def __call__(self, item: Item) -> np.ndarray:
        from mobileclip_export.models.preprocess import preprocess_image

        return preprocess_image(self.read(item), self.pre, max_pixels=self.max_pixels)


@dataclass
class IndexReport:
    library: str
    added: int = 0
    updated: int = 0
    touched: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    live: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _library_manifest(bundle: Any, enc: Any, target: str, root: Path, shard_rows: int) -> dict[str, Any]:
    rec = bundle.records(target, enc.precision).get("image") or bundle.records(target, enc.precision).get(
        "image+text"
    )
    ident = I.model_identity(bundle.manifest)
    return {
        "format": FORMAT,
        "version": VERSION,
        "dim": int(bundle.manifest["embed_dim"]),
        "dtype": DTYPE,
        "normalized": True,
        "shard_rows": shard_rows,
        "images_root": str(root),
        "model": ident,
        "bundle": I.bundle_identity(bundle.manifest, rec, target, enc.label),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _check_reopen(lib: Library, manifest: dict[str, Any], out: Path) -> None:
    I.require_same_model(lib.manifest["model"], manifest["model"], f"library {str(out)!r}")
    if lib.manifest["images_root"] != manifest["images_root"]:
        raise UsageError(
            f"library {str(out)!r} indexes {lib.manifest['images_root']!r}, not {manifest['images_root']!r}; "
            "one library per folder (choose another --out)"
        )


def _classify(
    lib: Library, ok: list[Item], emb: np.ndarray
) -> tuple[list[np.ndarray], list[list[Any]], list[list[Any]], int]:
    """(vectors to keep, their rows, touched [path, size, mtime] of same-content files, replaced count)."""
    vecs, rows, touched, replaced = [], [], [], 0
    for item, v in zip(ok, emb):
        if item.old_sha256 is not None and item.old_sha256 == item.sha256:
            touched.append([item.path, item.size, item.mtime_ns])
            continue
        replaced += item.old_sha256 is not None
        vecs.append(v)
        rows.append([item.path, item.size, item.mtime_ns, item.sha256])
    return vecs, rows, touched, replaced


def _run_shard(
    lib: Library,
    encode: Any,
    chunk: list[Item],
    loader: _Loader,
    batch: int,
    bar: ProgressBar,
    rep: IndexReport,
) -> None:
    """Embed one shard's files and commit them (rows, same-content touches, skipped files) in one log line."""
    vecs: list[np.ndarray] = []
    rows: list[list[Any]] = []
    touched: list[list[Any]] = []
    skipped: list[dict[str, Any]] = []
    replaced_here = 0
    for ok, emb, failed in embed_stream(encode, chunk, loader, batch):
        v, r, t, replaced = _classify(lib, ok, normalized_fp16(emb) if len(ok) else emb)
        vecs.extend(v)
        rows.extend(r)
        touched.extend(t)
        replaced_here += replaced
        for item, err in failed:
            skipped.append({"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns, "error": err})
        bar.update(len(ok) + len(failed))
    matrix = np.stack(vecs) if vecs else np.zeros((0, lib.dim), np.float16)
    lib.commit_shard(matrix, rows, touched=touched, skipped=skipped)
    rep.added += len(rows) - replaced_here
    rep.updated += replaced_here
    rep.touched += len(touched)
    rep.skipped.extend(skipped)


def index_folder(
    bundle: str | Path | Any,
    target: str,
    images: str | Path,
    out: str | Path,
    *,
    precision: str | None = None,
    checkpoint: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    shard_rows: int = SHARD_ROWS,
    max_image_pixels: int | None = None,
    progress: bool = True,
) -> IndexReport:
    """Index (or bring up to date) the library ``out`` for the image folder ``images``.

    ``shard_rows`` (files per commit) applies when the library is created; later runs keep its value.
    """
    from mobileclip_export.export.zeroshot.encoders import open_encoders, read_bundle_dir
    from mobileclip_export.models import get_model_spec

    root, out = _check_paths(images, out, batch_size, shard_rows)
    b = read_bundle_dir(bundle)
    enc = open_encoders(b, target, precision, checkpoint, need=("image",))
    try:
        manifest = _library_manifest(b, enc, target, root, shard_rows)
        with Library.create_or_open(out, manifest) as lib:
            _check_reopen(lib, manifest, out)
            loader = _Loader(root, get_model_spec(b.model).preprocessing, max_image_pixels)
            return _index(lib, enc.image, loader, root, out, batch_size, progress)
    finally:
        enc.close()


def _check_paths(images: str | Path, out: str | Path, batch_size: int, shard_rows: int) -> tuple[Path, Path]:
    root = Path(images).resolve()
    if not root.is_dir():
        raise UsageError(f"--images {str(images)!r} is not a folder")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size})")
    if shard_rows < 1:
        raise UsageError(f"--shard-rows must be >= 1 (got {shard_rows})")
    return root, Path(out).resolve()


def _index(
    lib: Library, encode: Any, loader: _Loader, root: Path, out: Path, batch: int, progress: bool
) -> IndexReport:
    t0 = time.perf_counter()
    plan = make_plan(root, lib.state, out)
    rep = IndexReport(str(out), unchanged=plan.unchanged)
    bar = ProgressBar(plan.work, enabled=progress)
    shard_rows = int(lib.manifest.get("shard_rows", SHARD_ROWS))
    for chunk in batched(work_items(root, lib.state, out), shard_rows):
        _run_shard(lib, encode, chunk, loader, batch, bar, rep)
    bar.finish()
    if plan.deleted:
        lib.append({"op": "delete", "paths": plan.deleted})
        rep.deleted = len(plan.deleted)
    rep.skipped.extend(_listed_skips(lib.state, {s["path"] for s in rep.skipped}))
    rep.live, rep.seconds = lib.live_count, round(time.perf_counter() - t0, 3)
    rep.images_per_s = round(bar.done / rep.seconds, 2) if rep.seconds > 0 else 0.0
    return rep


def _listed_skips(state: State, fresh: set[str]) -> list[dict[str, Any]]:
    """Files skipped by an earlier run and unchanged since: listed again so every run shows them all."""
    return [dict(v, path=k, earlier=True) for k, v in sorted(state.skipped.items()) if k not in fresh]

"""The on-disk bundle: ``{output_dir}/{model}/{target}/{model}-{encoder}-{precision}{ext}`` + manifest.json.

Atomicity: everything is built in a hidden temp directory inside ``output_dir`` (same filesystem, so renames
are atomic), each artifact is written into a hidden staging folder and renamed only after it verified, the
manifest is written last (temp file + ``os.replace``), and the finished directory is renamed into place. A
crash or Ctrl-C leaves the previous bundle untouched and removes (or at worst leaves) only the hidden temp
directory.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobileclip_export.errors import BundleStateError, IntegrityError, UsageError
from mobileclip_export.export.bundle.reader import (
    MANIFEST,
    BundleReader,
    check_sha,
    inside,
    read_bundle_at,
    real,
)

log = logging.getLogger(__name__)

STAGING = ".staging"  # per-target folder where backends write before an artifact is verified


def check_output_dir(output_dir: Path) -> Path | None:
    """Create ``output_dir`` if needed and prove we can write there, before any heavy work.

    Returns the outermost directory this call created (None if it existed), so a run that writes nothing
    can remove it again (``remove_created``).
    """
    created = next((p for p in [*reversed(output_dir.parents), output_dir] if not p.exists()), None)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"cannot create the output directory {str(output_dir)!r}: {err.strerror or err}"
        ) from err
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_created(created, output_dir)
        raise UsageError(
            f"output directory {str(output_dir)!r} is not writable: {err.strerror or err}"
        ) from err
    return created


def remove_created(created: Path | None, output_dir: Path) -> None:
    """Remove the directories ``check_output_dir`` created, if they are still empty."""
    if created is None:
        return
    for folder in [output_dir, *output_dir.parents]:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return
        if folder == created:
            return


def path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class BundleWriter:
    """Builds one bundle in a temp dir and commits it into ``output_dir/model``."""

    def __init__(self, output_dir: Path, model: str, force: bool) -> None:
        self.output_dir = Path(output_dir)
        self.model = model
        self.final_dir = self.output_dir / model
        self.force = force
        self.tmp_dir: Path | None = None

    def _tmp(self) -> Path:
        if self.tmp_dir is None:
            raise BundleStateError("the bundle writer is not open (open() not called, or already committed)")
        return self.tmp_dir

    def check_existing(self) -> None:
        if self.final_dir.exists() and not self.force:
            raise UsageError(
                f"bundle {str(self.final_dir)!r} already exists; pass --force (force=True) to replace it, "
                f"or choose another --output-dir"
            )

    def sweep_stale(self) -> list[Path]:
        """Remove staging dirs left by killed exports (SIGKILL, power loss): their PID tag names a dead one.

        A live PID (another export running now, or a reused PID) keeps its dir: never delete work in progress.
        """
        removed = []
        for d in self.output_dir.glob(f".{self.model}.partial-*"):
            pid_text = d.name[len(f".{self.model}.partial-") :].split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            remove_path(d)
            removed.append(d)
            log.info("removed %s, left by an interrupted export (process %s is gone)", d, pid_text)
        return removed

    def open(self) -> Path:
        self.sweep_stale()
        prefix = f".{self.model}.partial-{os.getpid()}-"
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.output_dir))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp_dir, 0o777 & ~umask)  # mkdtemp makes it 0700; the bundle should look like any dir
        return self.tmp_dir

    def partial_path(self, target: str, name: str) -> Path:
        """Where a backend writes (inside the temp bundle, hidden name)."""
        tmp_dir = self._tmp()
        # Converters check the extension (.mlpackage, .aimodel), so the file keeps its real name inside a
        # hidden staging folder; only `place` makes it visible.
        folder = tmp_dir / target / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / name
        remove_path(dest)
        return dest

    def place(self, partial: Path, target: str, name: str) -> Path:
        """Rename a finished artifact to its final name inside the temp bundle; returns the relative path."""
        tmp_dir = self._tmp()
        dest = tmp_dir / target / name
        remove_path(dest)
        os.replace(partial, dest)
        return dest.relative_to(tmp_dir)

    def drop_target(self, target: str) -> None:
        """Remove what was written for ``target`` so far (its export failed without records of its files)."""
        remove_path(self._tmp() / target)

    def _drop_staging(self) -> None:
        tmp_dir = self._tmp()
        for folder in tmp_dir.glob(f"*/{STAGING}"):
            remove_path(folder)
        for folder in tmp_dir.iterdir():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a target whose artifacts all failed

    def add_files(self, target: str, files: dict[str, bytes | Path]) -> list[str]:
        tmp_dir = self._tmp()
        folder = tmp_dir / target
        folder.mkdir(exist_ok=True)
        out = []
        for name, src in files.items():
            dest = folder / name
            if isinstance(src, Path):
                shutil.copyfile(src, dest)
            else:
                dest.write_bytes(src)
            out.append(dest.relative_to(tmp_dir).as_posix())
        return out

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._drop_staging()
        write_json_atomic(self._tmp() / MANIFEST, manifest)

    def commit(self) -> Path:
        """Move the finished bundle into place (replacing the old one only when forced)."""
        tmp_dir = self._tmp()
        old: Path | None = None
        if self.final_dir.exists():
            if not self.force:  # appeared while we worked
                raise UsageError(
                    f"bundle {str(self.final_dir)!r} appeared during the export; not overwriting"
                )
            old = self.output_dir / f".{self.model}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final_dir, old)
        os.replace(tmp_dir, self.final_dir)
        self.tmp_dir = None
        if old is not None:
            remove_path(old)
        return self.final_dir

    def carry_over(
        self, replaced: set[tuple[str, str, str]], same_weights: Callable[[dict], bool]
    ) -> list[dict]:
        """With ``force``: copy the previous bundle's good artifacts that this run does not re-export.

        Only when the previous manifest describes the same weights (``same_weights(old_manifest)``); a
        (target, encoder, precision) this run attempted is replaced even if the new attempt failed.
        Returns the carried manifest records. Copies (not moves) so the old bundle stays valid until commit.
        The previous bundle is read like any untrusted one (bundle reader): each source resolves inside it,
        each destination is its validated path inside the temp bundle, and nothing already there is replaced.
        """
        if not self.force or not (self.final_dir / MANIFEST).is_file():
            return []
        try:
            old = read_bundle_at(self.final_dir / MANIFEST)
        except IntegrityError as err:
            log.warning("previous bundle not carried over: %s", err)
            return []
        if not same_weights(old.manifest):
            log.info("previous bundle used other weights; replacing it entirely")
            return []
        carried = []
        for rec in old.records():
            key = (rec["target"], rec["encoder"], rec["precision"])
            if key in replaced or not rec.get("path") or rec.get("status") == "failed":
                continue
            try:
                rel = self._carry_file(old, rec["path"], rec.get("sha256"))
                for name in (rec.get("details") or {}).get("tokenizer_files", []):
                    self._carry_file(old, name, old.manifest.get("files", {}).get(name), shared=True)
            except IntegrityError as err:
                log.warning("previous artifact %s not carried over: %s", rec["path"], err)
                continue
            notes = [*rec.get("notes", []), "carried over unchanged from the previous export of this bundle"]
            carried.append({**rec, "path": rel, "notes": notes})
        return carried

    def _carry_file(self, old: BundleReader, rel: str, sha: str | None, shared: bool = False) -> str:
        """Copy ``rel`` of the previous bundle (checked against ``sha``) to the same place in the temp bundle;
        returns the normalized path. ``shared`` files (tokenizer) already there are left as they are."""
        tmp_dir = self._tmp()
        src = old.resolve(rel, f"carried-over {rel!r}")
        check_sha(src, sha, old.manifest_path)
        norm = posixpath.normpath(rel)
        dest = tmp_dir / norm
        if dest.exists() or dest.is_symlink():
            if shared:
                return norm
            raise IntegrityError(f"{norm}: already written by this export; the old record is not carried")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not inside(real(dest.parent), real(tmp_dir)):  # validated paths keep this; never write elsewhere
            raise IntegrityError(f"{norm}: its folder resolves outside the bundle being written")
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        return norm

    def abort(self) -> None:
        if self.tmp_dir is not None:
            remove_path(self.tmp_dir)
            self.tmp_dir = None

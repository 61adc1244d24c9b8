"""Where the artifacts to benchmark come from: a fresh ``export_model`` call or an existing bundle's manifest.

Either way the benchmark sees plain dicts shaped like ``ArtifactRecord.to_dict()`` plus the bundle dir, so
both paths share one code path afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUNDLE_KEY = "bundle_dir"  # set on records of a merged bundle: the dir their path is relative to


@dataclass
class Bundle:
    model: str
    bundle_dir: Path
    artifacts: list[dict[str, Any]]
    export_args: dict[str, Any] = field(default_factory=dict)
    random_init: bool = True


def find_manifest(bundle_dir: Path, model: str) -> Path:
    """``bundle_dir/manifest.json`` or ``bundle_dir/<model>/manifest.json`` (the export CLI's layout)."""
    for candidate in (bundle_dir / MANIFEST, bundle_dir / model / MANIFEST):
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"no {MANIFEST} for model {model!r} under {str(bundle_dir)!r} (looked in {bundle_dir / MANIFEST} and "
        f"{bundle_dir / model / MANIFEST}); export first with: mobileclip-export --model {model} "
        f"--output-dir {bundle_dir}"
    )


def read_bundle(bundle_dir: str | Path, model: str) -> Bundle:
    path = find_manifest(Path(bundle_dir), model)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not a readable manifest: {err}") from err
    if doc.get("model") != model:
        raise UsageError(f"{path} is a bundle of {doc.get('model')!r}, not {model!r}")
    arts = doc.get("artifacts")
    if not isinstance(arts, list):
        raise UsageError(f"{path} has no artifact list")
    return Bundle(
        model=model,
        bundle_dir=path.parent,
        artifacts=arts,
        export_args=doc.get("export_args") or {},
        random_init=bool(doc.get("random_init", True)),
    )


def artifact_path(bundle: Bundle, rec: Mapping[str, Any]) -> Path:
    """Where a record's artifact lives: its own bundle dir when several bundles were merged."""
    return Path(rec.get(BUNDLE_KEY) or bundle.bundle_dir) / rec["path"]


def parse_precisions(precision: str | None) -> tuple[str, ...] | None:
    """``--precision fp32,int8`` -> ("fp32", "int8"); None keeps each target's default."""
    if not precision:
        return None
    return tuple(dict.fromkeys(p.strip() for p in precision.split(",") if p.strip()))


def export_bundles(
    model: str,
    targets: list[str],
    encoders: tuple[str, ...],
    precision: str | None,
    output_dir: Path,
    **kwargs: Any,
) -> Bundle:
    """One export per precision (``output_dir/<precision>``, targets that offer it), merged into one bundle
    so the precisions of a target are timed side by side. Compressed precisions are exported with
    verification on: their accuracy guard runs only then, and its figures go into the report."""
    from mobileclip_export.export.registry import get_target

    precs = parse_precisions(precision)
    if precs is None or len(precs) == 1:
        single = precs[0] if precs else None
        return export_bundle(model, targets, encoders, single, output_dir, verify=_guarded(single), **kwargs)
    parts = []
    for prec in precs:
        chosen = [t for t in targets if prec in get_target(t).precisions]
        if not chosen:
            raise UsageError(f"--precision {prec}: none of the targets {', '.join(targets)} offers it")
        out = output_dir / prec
        part = export_bundle(model, chosen, encoders, prec, out, verify=_guarded(prec), **kwargs)
        for rec in part.artifacts:
            rec[BUNDLE_KEY] = str(part.bundle_dir)
        parts.append(part)
    return Bundle(
        model,
        parts[0].bundle_dir,
        [rec for part in parts for rec in part.artifacts],
        export_args=parts[0].export_args,
        random_init=parts[0].random_init,
    )


def _guarded(precision: str | None) -> bool:
    from mobileclip_export.export.compression.precisions import is_compressed

    return bool(precision) and is_compressed(precision)


def export_bundle(
    model: str,
    targets: list[str],
    encoders: tuple[str, ...],
    precision: str | None,
    output_dir: Path,
    *,
    reduced: bool,
    seed: int,
    checkpoint: str | None,
    progress: Any = None,
    verify: bool = False,
) -> Bundle:
    """Export, by default with ``verify=False``: the benchmark measures parity itself, same run, on its own
    inputs (compressed precisions verify, for their accuracy guard)."""
    from mobileclip_export.export import export_model

    result = export_model(
        model,
        targets,
        checkpoint=checkpoint,
        encoders=encoders,
        precision=precision,
        output_dir=output_dir,
        force=True,
        verify=verify,
        reduced=reduced,
        seed=seed,
        progress=progress,
    )
    arts = [a.to_dict() for a in result.artifacts]
    if result.bundle_dir is None:
        # Nothing was written; keep the failure records so the report says why.
        return Bundle(model, output_dir / model, arts, random_init=result.random_init)
    return Bundle(
        model,
        Path(result.bundle_dir),
        arts,
        export_args={"seed": seed, "reduced": reduced, "checkpoint": checkpoint},
        random_init=result.random_init,
    )

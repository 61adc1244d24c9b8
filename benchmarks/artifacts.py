"""Where the artifacts to benchmark come from: a fresh ``export_model`` call or an existing bundle's manifest.

Either way the benchmark sees plain dicts shaped like ``ArtifactRecord.to_dict()`` plus the bundle dir, so
both paths share one code path afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """The records to time and where their files are. ``roots[i]`` is the bundle folder record ``i``'s path
    is relative to (several when precisions were exported side by side); the manifest never chooses it."""

    model: str
    bundle_dir: Path
    artifacts: list[dict[str, Any]]
    export_args: dict[str, Any] = field(default_factory=dict)
    random_init: bool = True
    weights: dict[str, Any] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)
    checked: dict[int, Path] = field(default_factory=dict, repr=False)


def read_bundle(bundle_dir: str | Path, model: str) -> Bundle:
    """An exported bundle of ``model``, read and validated by the bundle reader."""
    from mobileclip_export.export.bundle.reader import open_bundle

    reader = open_bundle(bundle_dir, model)
    doc = reader.manifest
    if doc["model"] != model:
        raise UsageError(f"{reader.manifest_path} is a bundle of {doc['model']!r}, not {model!r}")
    return Bundle(
        model=model,
        bundle_dir=reader.root,
        artifacts=reader.records(),
        export_args=doc.get("export_args") or {},
        random_init=bool(doc.get("random_init", True)),
        weights=doc.get("weights") or {},
    )


def artifact_path(bundle: Bundle, rec: Mapping[str, Any]) -> Path:
    """A record's artifact, resolved inside its bundle folder and sha256-checked (once per run)."""
    from mobileclip_export.export.bundle.reader import MANIFEST, check_sha, resolve_inside

    i = next(i for i, a in enumerate(bundle.artifacts) if a is rec)
    if i not in bundle.checked:
        root = bundle.roots[i] if bundle.roots else bundle.bundle_dir
        path = resolve_inside(root, rec["path"], f"{root / MANIFEST}: artifact {rec['path']!r}")
        check_sha(path, rec.get("sha256"), root / MANIFEST)  # never time an altered file
        bundle.checked[i] = path
    return bundle.checked[i]


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
        parts.append(export_bundle(model, chosen, encoders, prec, out, verify=_guarded(prec), **kwargs))
    return Bundle(
        model,
        parts[0].bundle_dir,
        [rec for part in parts for rec in part.artifacts],
        export_args=parts[0].export_args,
        random_init=parts[0].random_init,
        roots=[part.bundle_dir for part in parts for _ in part.artifacts],
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
    options: dict[str, Any] | None = None,
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
        options={k: v for k, v in (options or {}).items() if k in targets} or None,  # per target
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

"""Plan the matrix: one ``Job`` per (model, target, precision, encoder), each with a content key and estimate.

The key hashes everything that decides an artifact's bytes: model, checkpoint sha256 (or the seed of random
weights), reduced size, target, precision, encoder, the target's validated options and the tool versions. Two
runs that agree on all of them may reuse each other's verified artifact; any difference makes a new cell.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError
from mobileclip_export.matrix.estimate import Estimate, estimate

log = logging.getLogger(__name__)

KEY_SCHEMA = 1
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass(frozen=True)
class MatrixRequest:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    precisions: tuple[str, ...] = ("default",)  # "default" = each target's default precision
    encoders: tuple[str, ...] = ("image", "text")
    checkpoint_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reduced: bool = False
    seed: int = 0


@dataclass
class Job:
    model: str
    target: str
    precision: str
    encoder: str
    options: dict[str, Any]
    checkpoint: str | None
    checkpoint_sha256: str | None
    seed: int
    reduced: bool
    versions: dict[str, str]
    mparams: float
    estimate: Estimate
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or cell_key(self)

    @property
    def cell_id(self) -> str:
        """Readable, still unique: the store's folder name for this cell."""
        return f"{self.model}-{self.target}-{self.precision}-{self.encoder}-{self.key[:12]}"

    @property
    def label(self) -> str:
        return f"{self.model} {self.target} {self.precision} {self.encoder}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{**d, "estimate": Estimate(**d["estimate"])})


@dataclass
class MatrixPlan:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # cells not planned, each with the reason


def cell_key(job: Job) -> str:
    weights = f"sha256:{job.checkpoint_sha256}" if job.checkpoint_sha256 else f"random:seed={job.seed}"
    payload = {
        "schema": KEY_SCHEMA,
        "model": job.model,
        "weights": weights,
        "reduced": job.reduced,
        "target": job.target,
        "precision": job.precision,
        "encoder": job.encoder,
        "options": job.options,
        "versions": job.versions,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the sources that shape an artifact (models, reparam, export, core), so a changed working
    tree at the same package version never reuses a cell exported by other code."""
    import mobileclip_export
    import mobileclip_export.export
    import mobileclip_export.models
    import mobileclip_export.reparam

    h = hashlib.sha256()
    for pkg in (mobileclip_export, mobileclip_export.models, mobileclip_export.reparam,
                mobileclip_export.export):
        root = Path(pkg.__file__).parent
        recurse = pkg is not mobileclip_export  # core/ holds only the top package's own files
        files = root.rglob("*") if recurse else root.glob("*")
        for path in sorted(f for f in files if f.suffix in (".py", ".json") and f.is_file()):
            name = f"{pkg.__name__}/{path.relative_to(root).as_posix()}"
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def job_versions(target: Any) -> dict[str, str]:
    """Tool versions of ``target`` plus the source digest: the versions part of a cell's key."""
    from mobileclip_export.export.bundle.manifest import tool_versions

    return {**tool_versions([target]), "mobileclip_export_source": source_digest()}


def find_checkpoint(checkpoint_dir: Path | None, model: str) -> Path | None:
    """``{dir}/{model}.safetensors|.pt|.pth``; None (random weights) when the dir has none for ``model``."""
    if checkpoint_dir is None:
        return None
    if not checkpoint_dir.is_dir():
        raise UsageError(f"--checkpoint-dir {str(checkpoint_dir)!r} is not a directory")
    for suffix in CHECKPOINT_SUFFIXES:
        path = checkpoint_dir / f"{model}{suffix}"
        if path.is_file():
            return path
    log.warning("%s: no checkpoint in %s (looked for %s); random weights", model, checkpoint_dir,
                ", ".join(f"{model}{s}" for s in CHECKPOINT_SUFFIXES))
    return None


@functools.lru_cache(maxsize=64)
def encoder_mparams(model: str, encoder: str, reduced: bool) -> float:
    """Millions of parameters: published counts at full size, counted on the (small) reduced model."""
    from mobileclip_export.models import create_model, get_model_spec

    if not reduced:
        pub = get_model_spec(model).published
        return float(pub.params_image_m if encoder == "image" else pub.params_text_m)
    quiet = logging.getLogger("mobileclip_export.models.factory")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # only counting: the random-weights warning is not news here
    try:
        built = create_model(model, reduced=True)
    finally:
        quiet.setLevel(level)
    module = built.image_encoder if encoder == "image" else built.text_encoder
    return sum(p.numel() for p in module.parameters()) / 1e6


def _target_options(targets: Sequence[str], encoders: Sequence[str], options: dict[str, Any]) -> dict:
    """Validate option names once across all chosen targets; per target name -> its own options."""
    from mobileclip_export.export.pipeline.plan import plan_export

    if options.get("multifunction"):
        raise UsageError("the matrix runs one encoder per cell; drop --multifunction")
    plan = plan_export(list(targets), list(encoders), None, options)
    # one encoder per cell: a target whose multifunction option defaults on (one artifact for both) is asked
    # for one artifact per encoder, so every cell's options say what its export does
    return {
        tp.target.name: (tp.target, tp.options | ({"multifunction": False} if tp.multifunction else {}))
        for tp in plan.targets
    }


def plan_matrix(req: MatrixRequest) -> MatrixPlan:
    """Every cell of the request, validated before any heavy work (UsageError names bad input)."""
    from mobileclip_export.export.pipeline.plan import resolve_encoders
    from mobileclip_export.hashing import file_sha256
    from mobileclip_export.models import get_model_spec

    if not req.models:
        raise UsageError("no model selected; pass --models (see `mobileclip-export --list-models`)")
    for m in req.models:
        get_model_spec(m)  # UnknownNameError lists the models
    encoders = resolve_encoders(req.encoders)
    per_target = _target_options(req.targets, encoders, req.options)
    plan = MatrixPlan()
    for model in req.models:
        ckpt = find_checkpoint(req.checkpoint_dir, model)
        sha = file_sha256(ckpt) if ckpt else None
        for name, (target, opts) in per_target.items():
            versions = job_versions(target)
            for prec in _precisions(target, req.precisions, plan.skipped):
                valid = target.validate(prec, opts)
                for enc in encoders:
                    mp = encoder_mparams(model, enc, req.reduced)
                    plan.jobs.append(
                        Job(model, name, prec, enc, valid, str(ckpt) if ckpt else None, sha, req.seed,
                            req.reduced, versions, round(mp, 3), estimate(mp))
                    )
    if not plan.jobs:
        raise UsageError("no cell to run: " + "; ".join(plan.skipped or ["empty request"]))
    return plan


def _precisions(target: Any, asked: Sequence[str], skipped: list[str]) -> list[str]:
    out: list[str] = []
    for p in asked:
        prec = target.default_precision if p == "default" else p
        if prec not in target.precisions:
            skipped.append(f"{target.name} {prec}: not supported (supported: {', '.join(target.precisions)})")
        elif prec not in out:
            out.append(prec)
    return out

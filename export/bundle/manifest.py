"""Result records (what ``export_model`` returns) and the manifest.json built from them."""

from __future__ import annotations

import json
import math
import platform
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class ArtifactRecord:
    """One artifact (or one failed attempt). ``path`` is relative to the bundle dir (None when not written).

    ``status``: "verified" (parity passed in a runtime), "unverified" (runtime unavailable here or
    --no-verify; structural checks passed), "failed" (conversion, structural check or parity failed).
    """

    target: str
    encoder: str  # "image" | "text" | "image+text"
    precision: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    status: str = "failed"
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # {"sizes": [N, ...] | None, "dynamic": bool, "verified": [...]}: see export/batching.py
    batch: dict[str, Any] | None = None
    # Not in the manifest: per encoder, the golden inputs' embeddings verification recorded while the artifact
    # was loaded (``golden.embeddings_while_loaded``), so the golden stage need not load it again.
    golden: dict[str, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(replace(self, golden=None)).items() if k != "golden"}


@dataclass
class ExportResult:
    model: str
    bundle_dir: Path | None
    manifest_path: Path | None
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    random_init: bool = True
    reparam_parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "model": self.model,
            "bundle_dir": str(self.bundle_dir) if self.bundle_dir else None,
            "manifest_path": str(self.manifest_path) if self.manifest_path else None,
            "random_init": self.random_init,
            "reparam_parity": self.reparam_parity,
            "warnings": list(self.warnings),
            "seconds": dict(self.seconds),
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


def tool_versions(targets: list[Any]) -> dict[str, str]:
    import numpy
    import torch

    from mobileclip_export import __version__

    out = {
        "mobileclip_export": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for t in targets:
        try:
            out.update(t.versions())
        except Exception as err:  # a broken optional package must not sink the manifest
            out[f"{t.name}_versions_error"] = str(err)
    return out


def build_manifest(
    *,
    result: ExportResult,
    spec_dict: dict[str, Any],
    weights: dict[str, Any],
    preprocessing: dict[str, Any],
    tokenizer: dict[str, Any],
    logit_scale: dict[str, float],
    export_args: dict[str, Any],
    versions: dict[str, str],
) -> dict[str, Any]:
    """Only artifacts that were fully written and renamed into place carry a ``path``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": result.model,
        "weights": weights,
        "random_init": result.random_init,
        "embed_dim": spec_dict.get("embed_dim"),
        "image_size": spec_dict.get("image_size"),
        "context_length": spec_dict.get("context_length"),
        "preprocessing": preprocessing,
        "tokenizer": tokenizer,
        "logit_scale": logit_scale,
        "embedding": "unnormalized; L2-normalize image and text embeddings, then logits = logit_scale * cos",
        "export_args": export_args,
        "tool_versions": versions,
        "reparam_parity": result.reparam_parity,
        "spec": spec_dict,
        "ok": result.ok,
        "artifacts": [a.to_dict() for a in result.artifacts],
    }


LOGIT_SCALE_MAX = 100.0
RECORD_FIELDS = frozenset(f.name for f in fields(ArtifactRecord))


def record_from_manifest(entry: dict[str, Any]) -> ArtifactRecord:
    """An ``ArtifactRecord`` from a manifest entry (unknown keys of other versions dropped)."""
    return ArtifactRecord(**{k: v for k, v in entry.items() if k in RECORD_FIELDS})


def weights_info(model: Any, checkpoint: str | Path | None, seed: int) -> dict[str, Any]:
    sha = getattr(model, "checkpoint_sha256", None)
    if checkpoint is None or getattr(model, "random_init", False):
        return {"source": f"random init, seed {seed}", "random_init": True, "seed": seed}
    return {"source": "checkpoint", "random_init": False, "checkpoint": Path(checkpoint).name, "sha256": sha}


def same_weights(old_manifest: dict[str, Any], weights: dict[str, Any], reduced: bool) -> bool:
    old_reduced = bool(old_manifest.get("export_args", {}).get("reduced", False))
    return old_manifest.get("weights") == weights and old_reduced == reduced


def logit_scale_info(model: Any) -> dict[str, float]:
    """The CLIP logit scale (exp of the learned log value, clamped as in training); CLIP's init if absent."""
    import torch

    raw = getattr(model, "logit_scale", None)
    log_value = float(raw.detach()) if isinstance(raw, torch.Tensor) else math.log(1 / 0.07)
    return {"log": log_value, "value": min(math.exp(log_value), LOGIT_SCALE_MAX), "max": LOGIT_SCALE_MAX}


def artifact_metadata(
    model_name: str,
    encoder: str,
    spec: Any,
    weights: dict[str, Any],
    logit: dict[str, float],
    versions: dict[str, str],
    tokenizer: dict[str, Any],
    reduced: bool,
) -> dict[str, str]:
    """Flat string facts embedded in each artifact (what an app reads without the manifest)."""
    meta = {
        "model": model_name,
        "encoder": encoder,
        "embed_dim": str(spec.embed_dim),
        "weights": weights["source"] if weights["random_init"] else f"checkpoint sha256 {weights['sha256']}",
        "random_init": str(weights["random_init"]).lower(),
        "reduced": str(reduced).lower(),
        "logit_scale": f"{logit['value']:.6g}",
        "embedding": "unnormalized; L2-normalize before cosine similarity",
        "producer": f"mobileclip-export {versions.get('mobileclip_export', '')}",
        "torch_version": versions.get("torch", ""),
        "tool_versions": json.dumps(versions, sort_keys=True),
    }
    if encoder == "image":
        meta["image_size"] = str(spec.image_size)
        meta["input"] = "RGB float32 NCHW in [0, 1] (no mean/std: the model normalizes internally)"
        meta["preprocessing"] = json.dumps(spec.preprocessing.to_dict(), sort_keys=True)
    else:
        meta["context_length"] = str(spec.context_length)
        meta["input"] = "int32 CLIP BPE token ids [B, 77]: SOT, tokens, EOT, then zeros"
        meta["tokenizer"] = json.dumps(tokenizer, sort_keys=True)
    return meta

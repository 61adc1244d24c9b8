"""Which model made a library's vectors: vectors from two models live in different spaces, so a library is
searched only with queries from the model (same variant, size and weights) that indexed it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mobileclip_export.errors import UsageError


def model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What fixes the embedding space: variant, reduced size, weights (checkpoint sha256 or seed), dim,
    preprocessing. Target and precision do not: every artifact is verified against the same model."""
    weights = manifest.get("weights") or {}
    if weights.get("random_init", manifest.get("random_init", True)):
        w = {"random_init": True, "seed": weights.get("seed", manifest.get("export_args", {}).get("seed", 0))}
    else:
        w = {"random_init": False, "sha256": weights.get("sha256")}
    ident = {
        "model": manifest.get("model"),
        "reduced": bool(manifest.get("export_args", {}).get("reduced", False)),
        "weights": w,
        "embed_dim": manifest.get("embed_dim"),
        "preprocessing": manifest.get("preprocessing"),
    }
    ident["fingerprint"] = fingerprint(ident)
    return ident


def fingerprint(ident: dict[str, Any]) -> str:
    body = {k: v for k, v in ident.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def bundle_identity(manifest: dict[str, Any], record: dict[str, Any] | None, target: str, label: str) -> dict:
    """The artifact that produced the vectors (informational: any artifact of the same model may query)."""
    rec = record or {}
    return {
        "target": target,
        "precision": rec.get("precision"),
        "artifact": rec.get("path"),
        "artifact_sha256": rec.get("sha256"),
        "runtime": label,
        "tool_version": (manifest.get("tool_versions") or {}).get("mobileclip_export"),
    }


def describe(ident: dict[str, Any]) -> str:
    w = ident.get("weights") or {}
    weights = (
        f"random seed {w.get('seed')}" if w.get("random_init") else f"checkpoint {str(w.get('sha256'))[:12]}"
    )
    size = " reduced" if ident.get("reduced") else ""
    return f"{ident.get('model')}{size} ({weights}, dim {ident.get('embed_dim')})"


def require_same_model(library: dict[str, Any], query: dict[str, Any], where: str) -> None:
    """UsageError when the query model is not the one the library was indexed with."""
    if library.get("fingerprint") != query.get("fingerprint"):
        raise UsageError(
            f"{where} was indexed with {describe(library)}; the bundle is {describe(query)}: "
            "its vectors are not comparable (re-index with this bundle, or search with the indexing one)"
        )

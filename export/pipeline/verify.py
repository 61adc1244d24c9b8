"""Verification inputs and the artifact-vs-train-time comparison.

The inputs themselves live in ``export/verify_inputs.py`` (backends that check dtypes during export use them
too).
The reference is always the TRAIN-TIME PyTorch encoder in fp32, so reparameterization errors count too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobileclip_export.export.batching import declared_batch, sizes_to_verify
from mobileclip_export.export.bundle.golden import embeddings_while_loaded
from mobileclip_export.export.bundle.manifest import ArtifactRecord
from mobileclip_export.export.parity import ParityStats, Tolerance
from mobileclip_export.export.spec import EncoderExport, Runner
from mobileclip_export.export.target import Target
from mobileclip_export.export.verify_inputs import VerifyInputs, spread_subset, subset


@torch.no_grad()
def torch_outputs(module: nn.Module, inputs: VerifyInputs) -> np.ndarray:
    """One batched forward: 3-5x faster than row by row on CPU for the train-time graphs; eval-mode
    results are batch-independent up to float32 summation order (~1e-7 relative, far below any tolerance)."""
    x = torch.from_numpy(inputs.data.copy())
    return module(x).detach().float().cpu().numpy()


def runner_outputs(runner: Runner, input_name: str, inputs: VerifyInputs) -> np.ndarray:
    """Row by row: the artifacts have a fixed batch of 1 unless exported with a dynamic batch."""
    rows = [
        np.asarray(runner.run({input_name: inputs.data[i : i + 1]}), dtype=np.float32).reshape(1, -1)
        for i in range(inputs.data.shape[0])
    ]
    return np.concatenate(rows, axis=0)


def parity_dict(
    stats: ParityStats | None,
    status: str,
    runtime: str | None = None,
    deployment: bool | None = None,
    violations: Sequence[str] = (),
) -> dict:
    """The parity block of a manifest record (same keys whether verification ran or not)."""
    d = {"cosine": None, "max_abs_diff": None, "mean_abs_diff": None, "psnr_db": None}
    if stats is not None:
        sd = stats.to_dict()
        d.update({k: sd[k] for k in d})
        d["ref_max_abs"] = sd["ref_max_abs"]
        d["n_inputs"] = sd["n_rows"]
    d.update({"status": status, "runtime": runtime, "is_deployment_runtime": deployment})
    if violations:
        d["violations"] = list(violations)
    return d


# ---------------------------------------------------------------- one artifact vs the train-time model


def structural_problems(
    rec: ArtifactRecord, target: Target, path: Path, encs: Sequence[EncoderExport]
) -> list[str]:
    """Run the target's structural checks per encoder into ``rec.details``; the problems found."""
    checks: dict[str, Any] = {enc.encoder: target.structural_checks(path, enc) or {} for enc in encs}
    rec.details["structural_checks"] = checks if len(encs) > 1 else checks[encs[0].encoder]
    many = len(encs) > 1
    return [f"{e}: {p}" if many else p for e, c in checks.items() for p in c.get("problems", [])]


def _encoder_parity(
    rec: ArtifactRecord,
    runner: Runner,
    enc: EncoderExport,
    vin: VerifyInputs,
    ref: np.ndarray,
    tol: Tolerance,
    sizes: Sequence[int],
) -> tuple[ParityStats, list[str], dict[int, ParityStats]]:
    """One encoder's parity: row by row (batch 1), then once per batch size ``sizes`` declares above 1,
    each as one call of exactly that many rows (the verification inputs cycled)."""
    from mobileclip_export.export.parity import compare

    name = enc.inputs[0].name
    keep = spread_subset(len(vin.labels), runner.max_verify_inputs)
    if len(keep) < len(vin.labels):
        vin, ref = subset(vin, keep), ref[keep]
        labels = ", ".join(vin.labels)
        rec.notes.append(f"{enc.encoder}: verified on {len(keep)} inputs ({labels}) (slow runtime)")
    stats = compare(ref, runner_outputs(runner, name, vin))
    bad = stats.violations(tol)
    by_batch = {1: stats}
    for n in (s for s in sizes if s > 1):
        rows = np.arange(n) % len(vin.data)
        got = np.asarray(runner.run({name: vin.data[rows]}), np.float32)
        by_batch[n] = compare(ref[rows], got)
        bad += [f"batch of {n}: {v}" for v in by_batch[n].violations(tol)]
    return stats, bad, by_batch


def verify_artifact(
    rec: ArtifactRecord,
    target: Target,
    precision: str,
    options: dict[str, Any],
    path: Path,
    encs: Sequence[EncoderExport],
    vins: dict[str, VerifyInputs],
    refs: dict[str, np.ndarray],
    verify: bool,
    golden: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> None:
    """Structural checks, then (unless ``verify`` is off or the runtime is unavailable here) parity of
    ``path`` run in the target's runtime vs the train-time references; sets ``rec.status``/``parity``.
    With ``golden`` feeds, their outputs are recorded in ``rec.golden`` while the runtime is loaded."""
    from mobileclip_export.export.spec import RuntimeUnavailable
    from mobileclip_export.export.tolerances import tolerance_for

    rec.golden = None  # whatever an earlier verification of this record ran is stale now
    rec.batch = {**declared_batch(rec.to_dict()), "verified": []}
    problems = structural_problems(rec, target, path, encs)
    if problems:
        rec.status, rec.error = "failed", "structural check failed: " + "; ".join(problems)
        rec.parity = parity_dict(None, "not run")
        return
    if not verify:
        rec.status, rec.parity = "unverified", parity_dict(None, "skipped: --no-verify")
        return
    try:
        runner = target.load(path, options)
    except RuntimeUnavailable as err:
        rec.status, rec.parity = "unverified", parity_dict(None, f"skipped: {err}")
        return
    sizes = sizes_to_verify(rec.batch)
    tol = tolerance_for(precision)
    try:
        per_enc = {
            e.encoder: _encoder_parity(rec, runner, e, vins[e.encoder], refs[e.encoder], tol, sizes)
            for e in encs
        }
        if golden is not None:
            rec.golden = {e.encoder: embeddings_while_loaded(runner, e.inputs[0].name, golden[e.encoder])
                          for e in encs}  # fmt: skip
    finally:
        runner.close()
    _record_parity(rec, runner, per_enc)


def _record_parity(
    rec: ArtifactRecord,
    runner: Runner,
    per_enc: dict[str, tuple[ParityStats, list[str], dict[int, ParityStats]]],
) -> None:
    many = len(per_enc) > 1
    worst_enc = min(per_enc, key=lambda e: (not per_enc[e][1], per_enc[e][0].cosine))
    stats, bad, _ = per_enc[worst_enc]
    status = "failed" if any(v for _, v, _ in per_enc.values()) else "passed"
    violations = [f"{e}: {v}" for e, (_, vs, _) in per_enc.items() for v in vs] if many else bad
    rec.parity = parity_dict(stats, status, runner.label, runner.is_deployment_runtime, violations)
    if many:
        rec.parity["by_encoder"] = {e: s.to_dict() for e, (s, _, _) in per_enc.items()}
    sizes = sorted({n for _, _, b in per_enc.values() for n in b})
    # per batch size, the worst encoder: every declared size has its own row, so batch 1 passing says
    # nothing about batch N
    rec.parity["by_batch"] = {
        str(n): min((b[n] for _, _, b in per_enc.values() if n in b), key=lambda s: s.cosine).to_dict()
        for n in sizes
    }
    rec.batch = {**(rec.batch or {}), "verified": sizes}
    if status == "failed":
        rec.status = "failed"
        rec.error = f"parity failed vs the train-time PyTorch model: {'; '.join(rec.parity['violations'])}"
    else:
        rec.status = "verified"

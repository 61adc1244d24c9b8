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
    dynamic: set[str],
) -> tuple[ParityStats, list[str]]:
    """One encoder's parity (row by row, and as one batch when the input's batch is dynamic)."""
    from mobileclip_export.export.parity import compare

    name = enc.inputs[0].name
    keep = spread_subset(len(vin.labels), runner.max_verify_inputs)
    if len(keep) < len(vin.labels):
        vin, ref = subset(vin, keep), ref[keep]
        labels = ", ".join(vin.labels)
        rec.notes.append(f"{enc.encoder}: verified on {len(keep)} inputs ({labels}) (slow runtime)")
    stats = compare(ref, runner_outputs(runner, name, vin))
    bad = stats.violations(tol)
    if name in dynamic:
        batched = compare(ref, np.asarray(runner.run({name: vin.data}), np.float32))
        rec.details.setdefault("batched_parity", {})[enc.encoder] = batched.to_dict()
        bad += [f"batch of {len(vin.data)}: {v}" for v in batched.violations(tol)]
    return stats, bad


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
    dynamic = {i["name"] for i in rec.inputs if i.get("shape") and i["shape"][0] in (-1, None)}
    tol = tolerance_for(precision)
    try:
        per_enc = {
            e.encoder: _encoder_parity(rec, runner, e, vins[e.encoder], refs[e.encoder], tol, dynamic)
            for e in encs
        }
        if golden is not None:
            rec.golden = {e.encoder: embeddings_while_loaded(runner, e.inputs[0].name, golden[e.encoder])
                          for e in encs}  # fmt: skip
    finally:
        runner.close()
    _record_parity(rec, runner, per_enc)


def _record_parity(
    rec: ArtifactRecord, runner: Runner, per_enc: dict[str, tuple[ParityStats, list[str]]]
) -> None:
    many = len(per_enc) > 1
    worst_enc = min(per_enc, key=lambda e: (not per_enc[e][1], per_enc[e][0].cosine))
    stats, bad = per_enc[worst_enc]
    status = "failed" if any(v for _, v in per_enc.values()) else "passed"
    violations = [f"{e}: {v}" for e, (_, vs) in per_enc.items() for v in vs] if many else bad
    rec.parity = parity_dict(stats, status, runner.label, runner.is_deployment_runtime, violations)
    if many:
        rec.parity["by_encoder"] = {e: s.to_dict() for e, (s, _) in per_enc.items()}
    if status == "failed":
        rec.status = "failed"
        rec.error = f"parity failed vs the train-time PyTorch model: {'; '.join(rec.parity['violations'])}"
    else:
        rec.status = "verified"

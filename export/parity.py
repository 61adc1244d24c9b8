"""Error statistics between a reference output and an artifact's output, and the pass/fail decision.

A dataclass of numbers, never a bare bool: a failure must say by how much.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Embeddings and logits of a sane model are small: max|reference| measured 0.04..3.9 over 82 stored artifacts
# (random weights), and logits are bounded by logit_scale (100). Outputs beyond this mean broken weights (e.g.
# integers cast to float) or a broken artifact, whatever the relative error says.
MAX_OUTPUT_ABS = 1e4


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria. ``max_abs_rel`` is max|diff| relative to max|reference| (scale-free across models)."""

    min_cosine: float
    max_abs_rel: float
    min_psnr_db: float


@dataclass(frozen=True)
class ParityStats:
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float  # the worst (lowest) per-row cosine similarity
    psnr_db: float
    ref_max_abs: float
    n_rows: int

    def to_dict(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    def violations(self, tol: Tolerance, *, final_output: bool = True) -> list[str]:
        """Human-readable reasons this comparison fails ``tol``; empty when it passes. A model's final output
        must also stay below ``MAX_OUTPUT_ABS`` (intermediate values, ``final_output=False``, need not)."""
        out = []
        if not (math.isfinite(self.ref_max_abs) and math.isfinite(self.max_abs_diff)):
            out.append(f"non-finite outputs (max|ref| {self.ref_max_abs}, max|diff| {self.max_abs_diff})")
        elif final_output and self.ref_max_abs + self.max_abs_diff > MAX_OUTPUT_ABS:
            out.append(
                f"outputs absurdly large: max|ref| {self.ref_max_abs:.3e}, max|diff| {self.max_abs_diff:.3e} "
                f"(limit {MAX_OUTPUT_ABS:g}; broken weights, e.g. integers cast to float?)"
            )
        if not self.cosine >= tol.min_cosine:  # `not >=` also catches NaN
            out.append(f"cosine {self.cosine:.7f} < {tol.min_cosine}")
        limit = tol.max_abs_rel * self.ref_max_abs
        if not self.max_abs_diff <= limit:
            out.append(f"max|diff| {self.max_abs_diff:.3e} > {limit:.3e} ({tol.max_abs_rel:g} x max|ref|)")
        if not self.psnr_db >= tol.min_psnr_db:
            out.append(f"PSNR {self.psnr_db:.1f} dB < {tol.min_psnr_db} dB")
        return out


def compare(reference: np.ndarray, actual: np.ndarray) -> ParityStats:
    """Compare two ``[B, D]`` (or any same-shape) arrays in float64."""
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    if ref.shape != act.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs actual {act.shape}")
    ref2 = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    act2 = act.reshape(ref2.shape)
    diff = np.abs(ref2 - act2)
    finite = bool(np.isfinite(act2).all())
    num = (ref2 * act2).sum(axis=1)
    den = np.linalg.norm(ref2, axis=1) * np.linalg.norm(act2, axis=1)
    cos = float(np.min(np.where(den > 0, num / np.maximum(den, 1e-300), 1.0))) if finite else float("nan")
    mse = float(np.mean(diff**2)) if finite else float("inf")
    peak = float(np.max(np.abs(ref2)))
    if mse == 0:
        psnr = float("inf")
    else:
        psnr = 10 * math.log10(peak**2 / mse) if peak > 0 and finite else float("-inf")
    return ParityStats(
        max_abs_diff=float(diff.max()) if finite else float("inf"),
        mean_abs_diff=float(diff.mean()) if finite else float("inf"),
        cosine=cos,
        psnr_db=psnr,
        ref_max_abs=peak,
        n_rows=int(ref2.shape[0]),
    )


@dataclass(frozen=True)
class TaskTolerance:
    """Task-level pass criteria of a compressed artifact (image-to-text retrieval over the shipped photographs
    and captions, against the fp32 train-time model): agreement of the top-1 caption, fp32's top-1 caption
    within the artifact's top 5, and the mean absolute change of the zero-shot probabilities."""

    min_top1_agreement: float
    min_top5_agreement: float
    max_prob_change: float

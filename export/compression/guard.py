"""Accuracy guard of compressed artifacts: a task measure next to the embedding parity, and per-layer
sensitivity to say which layers to keep uncompressed.

The task is image-to-text retrieval over the shipped photographs and captions (``export.calibration``):
with the artifact standing in for one encoder and the fp32 train-time model for the other, it measures
how often the top-1 caption agrees with fp32, how often fp32's top-1 caption stays in the artifact's top 5,
and the mean absolute change
of the zero-shot probabilities (softmax of the scaled cosine over the captions). Limits per precision are
the ``TASK_TOLERANCES`` rows of the one tolerance table.

Sensitivity is measured in PyTorch: each compressible layer alone gets its weights rounded the way the
precision rounds them (per-channel int8, or a k-means lookup table of 2^n values), and the embedding's
worst-row cosine against the unmodified encoder ranks the layers. It only ranks; the artifact itself is what
the guard judges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobileclip_export.export.compression.calibration import TaskData
from mobileclip_export.export.compression.evalset import embed_batches, eval_measures, eval_violations
from mobileclip_export.export.compression.precisions import PALETTIZE_BITS
from mobileclip_export.export.parity import TaskTolerance, Tolerance, compare

log = logging.getLogger(__name__)

MIN_LAYER_SIZE = 2048  # smaller weights stay in float in every backend's compression


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# fp32's top caption must lead the runner-up by this many logits for a flip to count. Trained CLIP models
# (logit scale 100) separate their best caption by several logits; random or untrained weights embed every
# photo alike and rank the captions within ~0.05 (measured: S0 random init 0.053, random BN/layer-scale
# checkpoint 0.024), so any rounding reorders them and a retrieval flip there says nothing.
DECISIVE_MARGIN = 0.25


def _logits(img: np.ndarray, txt: np.ndarray, scale: float) -> np.ndarray:
    return scale * _normalized(img) @ _normalized(txt).T


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def task_measures(task: TaskData, image: np.ndarray | None, text: np.ndarray | None) -> dict[str, float]:
    """Retrieval agreement with fp32 when ``image`` and/or ``text`` embeddings come from an artifact.

    Top-1/top-5 agreement count the photos whose fp32 ranking is decisive (``DECISIVE_MARGIN``); with none,
    they are measured over all photos and ``decisive_images`` = 0 says they cannot be enforced."""
    ref_logits = _logits(task.ref_image, task.ref_text, task.logit_scale)
    ref = _probs(ref_logits)
    got = _probs(
        _logits(
            task.ref_image if image is None else image,
            task.ref_text if text is None else text,
            task.logit_scale,
        )
    )
    k = min(5, ref.shape[1])
    top_ref, top_got = np.argsort(-ref, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    ordered = np.sort(ref_logits, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    decisive = margin >= DECISIVE_MARGIN
    rows = decisive if decisive.any() else np.ones_like(decisive)
    return {
        "top1_agreement": float(np.mean(top_ref[rows, 0] == top_got[rows, 0])),
        # fp32's best caption still among the artifact's top 5 (robust to swaps among near-ties below it)
        "top5_agreement": float(np.mean([a in b for a, b in zip(top_ref[rows, 0], top_got[rows])])),
        "mean_abs_prob_change": float(np.mean(np.abs(got - ref))),
        "n_images": int(ref.shape[0]),
        "n_captions": int(ref.shape[1]),
        "decisive_images": int(decisive.sum()),
    }


def task_violations(m: dict[str, float], tol: TaskTolerance) -> list[str]:
    out = []
    if not m["top1_agreement"] >= tol.min_top1_agreement:
        out.append(f"top-1 agreement {m['top1_agreement']:.3f} < {tol.min_top1_agreement}")
    if not m["top5_agreement"] >= tol.min_top5_agreement:
        out.append(f"top-5 agreement {m['top5_agreement']:.3f} < {tol.min_top5_agreement}")
    if not m["mean_abs_prob_change"] <= tol.max_prob_change:
        out.append(f"mean |prob change| {m['mean_abs_prob_change']:.4f} > {tol.max_prob_change}")
    return out


# ---------------------------------------------------------------- per-layer sensitivity (PyTorch)


def _lut_round(w: np.ndarray, nbits: int, iters: int = 12, seed: int = 0) -> np.ndarray:
    """Values of ``w`` replaced by the nearest of 2^nbits 1-D k-means centres (quantile start, Lloyd steps
    on a sample of at most 200k values)."""
    flat = w.reshape(-1).astype(np.float64)
    rng = np.random.default_rng(seed)
    sample = flat if flat.size <= 200_000 else rng.choice(flat, 200_000, replace=False)
    k = 1 << nbits
    c = np.quantile(sample, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        c = np.unique(c)
        a = np.searchsorted((c[1:] + c[:-1]) / 2, sample)
        cnt = np.bincount(a, minlength=c.size)
        c = np.where(cnt > 0, np.bincount(a, sample, c.size) / np.maximum(cnt, 1), c)
    c = np.unique(c)
    return c[np.searchsorted((c[1:] + c[:-1]) / 2, flat)].reshape(w.shape)


def simulate_weight(w: np.ndarray, precision: str) -> np.ndarray:
    """``w`` as the precision rounds it: per-output-channel symmetric int8, or a k-means LUT."""
    precision = precision.removesuffix("-static")  # activation quantization leaves the weights' rounding
    if precision in PALETTIZE_BITS:
        return _lut_round(w, PALETTIZE_BITS[precision]).astype(w.dtype)
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127.0
    return (np.clip(np.round(rows / scale), -127, 127) * scale).reshape(w.shape).astype(w.dtype)


def compressible_layers(module: Any) -> list[str]:
    """Parameters every backend compresses: rank >= 2 and at least ``MIN_LAYER_SIZE`` values."""
    return [
        n.removesuffix(".weight")
        for n, p in module.named_parameters()
        if p.dim() >= 2 and p.numel() >= MIN_LAYER_SIZE
    ]


def layer_sensitivity(module: Any, x: np.ndarray, precision: str) -> list[tuple[str, float]]:
    """``(layer, 1 - worst-row cosine)`` for each compressible layer compressed alone, worst first."""
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x))
        ref = module(xt).float().numpy()
        out = []
        for layer in compressible_layers(module):
            p = params.get(layer + ".weight", params.get(layer))
            saved = p.detach().clone()
            p.copy_(torch.from_numpy(simulate_weight(saved.numpy(), precision)))
            try:
                y = module(xt).float().numpy()
            finally:
                p.copy_(saved)
            cos = np.sum(_normalized(ref) * _normalized(y), axis=1).min()
            out.append((layer, float(1.0 - cos)))
    return sorted(out, key=lambda t: -t[1])


@dataclass
class GuardReport:
    """What the guard measured on one artifact; ``violations`` empty means it passed."""

    precision: str
    encoder: str
    measures: dict[str, float]
    violations: list[str]
    worst_layers: list[tuple[str, float]] = field(default_factory=list)
    kept_layers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def message(self) -> str:
        worst = ", ".join(f"{n} ({d:.2e})" for n, d in self.worst_layers[:5])
        return (
            f"accuracy guard ({self.precision}, {self.encoder}): {'; '.join(self.violations)}; "
            f"most sensitive layers (1 - cosine when compressed alone): {worst or 'n/a'}; "
            "keep some with --keep-fp LAYERS or let --auto-keep-fp find them"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "passed" if self.passed else "failed",
            **self.measures,
            "violations": list(self.violations),
            "worst_layers": [{"layer": n, "one_minus_cosine": d} for n, d in self.worst_layers[:10]],
            "kept_fp_layers": list(self.kept_layers),
        }


def guard_artifact(
    task: TaskData,
    encoder: str,
    embed: Callable[[np.ndarray], np.ndarray],
    precision: str,
    tols: tuple[Tolerance, TaskTolerance],
    verify: tuple[np.ndarray, np.ndarray],
) -> GuardReport:
    """Judge an artifact (``embed``: batch in, embeddings out) on the verification inputs (``verify`` =
    inputs, fp32 train-time outputs; cosine, max|diff|, PSNR) and on its encoder's task inputs."""
    stats = compare(verify[1], embed(verify[0]))
    got = embed(task.images if encoder == "image" else task.ids)
    m = task_measures(task, got if encoder == "image" else None, got if encoder == "text" else None)
    m.update({"cosine": stats.cosine, "max_abs_diff": stats.max_abs_diff, "psnr_db": stats.psnr_db})
    task_bad = task_violations(m, tols[1])
    if task.evaluation is not None:  # the user's own images: accuracy drop against fp32
        ev = task.evaluation
        got_ev = embed_batches(embed, ev.images) if encoder == "image" else embed(ev.ids)
        m.update(eval_measures(ev, *((got_ev, None) if encoder == "image" else (None, got_ev))))
        task_bad += eval_violations(m)
    waived: list[str] = []
    if not task.enforce_task:  # random weights: the task is reported, parity alone is enforced
        waived, task_bad, why = task_bad, [], "random weights"
    elif m["decisive_images"] == 0:  # every ranking a near tie: a retrieval flip says nothing
        waived = [v for v in task_bad if v.startswith(("top-1", "top-5"))]
        task_bad = [v for v in task_bad if v not in waived]
        why = f"fp32 ranks every photo's captions within {DECISIVE_MARGIN} logits"
    if waived:
        log.warning("guard (%s %s), not enforced (%s): %s", precision, encoder, why, "; ".join(waived))
        m["task_not_enforced"] = "; ".join(waived)  # type: ignore[assignment]
    return GuardReport(precision, encoder, m, stats.violations(tols[0]) + task_bad)

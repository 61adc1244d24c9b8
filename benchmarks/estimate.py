"""Latency estimates for devices this machine cannot reach. Every number from here is labelled ``estimate``.

iPhone-class Neural Engine (Core ML), "ane-linear" model
--------------------------------------------------------
    t_ms = c0 + c_conv * conv_GMACs + c_mm * matmul_GMACs + c_mem * weight_MB_fp16

- ``c0``: per-inference overhead (dispatch, I/O copies);
- ``c_conv``, ``c_mm``: ms per GMAC for convolutions and for matrix multiplies (linear layers, attention); the
  Neural Engine runs wide convolutions far more efficiently than transformer matmuls, so one shared rate fits
  poorly (leave-one-out MAPE 20 % with one rate vs 9 % with two);
- ``c_mem``: ms per MB of weights streamed per inference (fp16, token-embedding tables excluded: only 77 rows
  are
  gathered).

The coefficients are non-negative least squares on relative error, fitted to the published MobileCLIP
latencies (iPhone 12 Pro Max, Core ML; field notes "Published anchors") with GMACs from the reference
(section 6)
and reparameterized parameter counts (section 1). Anchors are de-duplicated: several models share one text
encoder and one published text latency, and counting those twice would flatter the leave-one-out error.
The conv/matmul split of every anchor is counted from the graph (``macs.count_macs``), as for our own graphs.

Leave-one-out (LOO): each anchor is predicted from a fit on the other nine; the mean absolute % error and the
worst case are printed next to every estimate.

Android big core via XNNPACK, "core-scaled" model
------------------------------------------------
No MobileCLIP Android latencies are published, so nothing can be calibrated or LOO-checked. The estimate
scales
this run's fastest host deployment-runtime median by (host dense-matmul GFLOP/s measured in this run) /
(device core peak GFLOP/s from a stated profile). It assumes the runtime reaches the same fraction of peak on
the phone as on this host; it says so and carries "LOO n/a".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Anchor:
    """One published latency with the graph facts the model uses."""

    name: str
    encoder: str  # "image" | "text"
    gmacs: float
    matmul_fraction: float  # share of MACs in matmuls (linear, attention); the rest is convolution
    weight_mparams: float  # streamed parameters, millions (token embedding excluded)
    latency_ms: float


# GMACs: reference section 6. Params: reparameterized counts (section 1); text towers minus the 49408 x width
# token embedding (25.3M at 512, 37.9M at 768). matmul_fraction: counted by ``macs.count_macs`` on this
# package's reparameterized models (MACs do not depend on weight values); totals match section 6 to 0.5 %.
ANE_ANCHORS: tuple[Anchor, ...] = (
    Anchor("MCi0 (S0)", "image", 2.38, 0.060, 11.4, 1.5),
    Anchor("MCi1 (S1)", "image", 4.65, 0.061, 21.5, 2.5),
    Anchor("MCi2 (S2)", "image", 7.82, 0.056, 35.7, 3.6),
    Anchor("ViT-B/16 (B)", "image", 17.7, 0.985, 86.3, 10.4),
    Anchor("MCi3 (S3)", "image", 14.8, 0.063, 125.1, 8.0),
    Anchor("MCi4 (S4)", "image", 27.8, 0.079, 321.6, 19.6),
    Anchor("ViT-L/14 (L-14)", "image", 81.0, 0.998, 304.3, 57.9),
    Anchor("MCt (S0 text)", "text", 1.32, 0.754, 42.4 - 25.3, 1.6),
    Anchor("Base 12L-512 text", "text", 2.98, 1.0, 63.4 - 25.3, 3.3),
    Anchor("12L-768 text", "text", 6.65, 1.0, 123.6 - 37.9, 6.6),
)

FEATURES = ("overhead", "conv_gmacs", "matmul_gmacs", "weight_mb_fp16")


def features(gmacs: float, matmul_fraction: float, weight_mparams: float) -> np.ndarray:
    return np.array([1.0, gmacs * (1 - matmul_fraction), gmacs * matmul_fraction, 2.0 * weight_mparams])


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares minimizing sum(((x @ c - y) / y)^2), by trying every active set.

    With four features that is 15 small solves: exact, dependency-free, and fast.
    """
    w = 1.0 / y
    best: tuple[float, np.ndarray] | None = None
    n = x.shape[1]
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            a = x[:, cols] * w[:, None]
            coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(n)
            full[list(cols)] = coef
            sse = float(np.sum(((x @ full - y) * w) ** 2))
            if best is None or sse < best[0]:
                best = (sse, full)
    assert best is not None  # a single non-negative column always exists for positive data
    return best[1]


@dataclass(frozen=True)
class LooResult:
    errors_pct: dict[str, float]  # anchor name -> signed % error of its held-out prediction

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(list(self.errors_pct.values()))))

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.errors_pct, key=lambda k: abs(self.errors_pct[k]))
        return name, self.errors_pct[name]

    def summary(self) -> str:
        name, err = self.worst
        return f"LOO MAPE {self.mape:.1f}% (worst {err:+.0f}% on {name}, n={len(self.errors_pct)})"


class AneModel:
    """The fitted iPhone Neural Engine model (see module doc)."""

    def __init__(self, anchors: Sequence[Anchor] = ANE_ANCHORS) -> None:
        self.anchors = tuple(anchors)
        self.x = np.stack([features(a.gmacs, a.matmul_fraction, a.weight_mparams) for a in self.anchors])
        self.y = np.array([a.latency_ms for a in self.anchors])
        self.coef = nnls_relative(self.x, self.y)
        self.loo = self._leave_one_out()

    def _leave_one_out(self) -> LooResult:
        errors: dict[str, float] = {}
        for i, anchor in enumerate(self.anchors):
            keep = np.arange(len(self.anchors)) != i
            coef = nnls_relative(self.x[keep], self.y[keep])
            errors[anchor.name] = float((self.x[i] @ coef - self.y[i]) / self.y[i] * 100)
        return LooResult(errors)

    def predict(self, gmacs: float, matmul_fraction: float, weight_mparams: float) -> float:
        return float(features(gmacs, matmul_fraction, weight_mparams) @ self.coef)

    def matching_anchor(self, gmacs: float, matmul_fraction: float, weight_mparams: float) -> Anchor | None:
        """The anchor with the same graph facts (GMACs and weights within 2 %, split within 0.05), if any."""
        for a in self.anchors:
            if (
                abs(a.gmacs - gmacs) <= 0.02 * a.gmacs
                and abs(a.weight_mparams - weight_mparams) <= 0.02 * a.weight_mparams
                and abs(a.matmul_fraction - matmul_fraction) <= 0.05
            ):
                return a
        return None

    def describe(self) -> str:
        terms = ", ".join(f"{n}={c:.4g}" for n, c in zip(FEATURES, self.coef, strict=True))
        return f"t_ms = c . [{', '.join(FEATURES)}] with {terms}"


@dataclass(frozen=True)
class CoreProfile:
    """A phone CPU core as far as the scaling needs it. The peak is arithmetic from the microarchitecture."""

    name: str
    peak_gflops_fp32: float
    basis: str


# Cortex-X3-class big core: 4 x 128-bit NEON FMA pipes x 4 fp32 lanes x 2 flop x 3.2 GHz.
ANDROID_BIG_CORE = CoreProfile(
    name="Android big core (Cortex-X3 class, XNNPACK fp32, 1 thread)",
    peak_gflops_fp32=4 * 4 * 2 * 3.2,
    basis="4 NEON FMA pipes x 4 fp32 lanes x 2 flop x 3.2 GHz",
)


@dataclass(frozen=True)
class Estimate:
    device: str
    encoder: str
    latency_ms: float
    method: str
    error_note: str  # LOO summary, or why there is none
    inputs: dict[str, float]


def estimate_ane(
    encoder: str, gmacs: float, matmul_fraction: float, weight_mparams: float, model: AneModel | None = None
) -> Estimate:
    model = model or AneModel()
    note = model.loo.summary()
    own = model.matching_anchor(gmacs, matmul_fraction, weight_mparams)
    if own is not None:
        note += (
            f"; this encoder is anchor {own.name!r}: held-out error {model.loo.errors_pct[own.name]:+.1f}%"
        )
    return Estimate(
        device="iPhone 12 Pro Max-class Neural Engine (Core ML)",
        encoder=encoder,
        latency_ms=model.predict(gmacs, matmul_fraction, weight_mparams),
        method="ane-linear: " + model.describe(),
        error_note=note,
        inputs={"gmacs": gmacs, "matmul_fraction": matmul_fraction, "weight_mparams": weight_mparams},
    )


def estimate_android(
    encoder: str, host_median_ms: float, host_peak_gflops: float, profile: CoreProfile = ANDROID_BIG_CORE
) -> Estimate:
    return Estimate(
        device=profile.name,
        encoder=encoder,
        latency_ms=host_median_ms * host_peak_gflops / profile.peak_gflops_fp32,
        method=f"core-scaled: host median x host peak / device peak ({profile.basis})",
        error_note="LOO n/a: no published Android MobileCLIP latencies to validate against",
        inputs={
            "host_median_ms": host_median_ms,
            "host_peak_gflops": host_peak_gflops,
            "device_peak_gflops": profile.peak_gflops_fp32,
        },
    )

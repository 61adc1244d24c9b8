"""Latency statistics over timed runs.

Conventions (documented so numbers from different tools compare):
- ``median`` and ``p90`` use linear interpolation between order statistics (NumPy's default, "type 7");
- ``trimmed_mean`` drops ``trim`` (default 10 %) of the samples from EACH end before averaging, the same
  definition ExecuTorch's benchmark apps use for ``trimmean_inference_latency(ms)``;
- ``std`` is the sample standard deviation (ddof=1; 0 for a single sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of ``n`` latency samples, all in milliseconds."""

    n: int
    median: float
    p90: float
    trimmed_mean: float
    mean: float
    std: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def trimmed_mean(samples: Sequence[float], trim: float = 0.1) -> float:
    """Mean after dropping ``floor(trim * n)`` samples from each end."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    xs = np.sort(np.asarray(samples, dtype=np.float64))
    if xs.size == 0:
        raise ValueError("no samples")
    k = int(math.floor(trim * xs.size))
    return float(xs[k : xs.size - k].mean())


def summarize(samples_ms: Sequence[float], trim: float = 0.1) -> LatencyStats:
    xs = np.asarray(samples_ms, dtype=np.float64)
    if xs.size == 0:
        raise ValueError("no latency samples to summarize")
    if not np.isfinite(xs).all():
        raise ValueError("latency samples contain NaN or inf")
    return LatencyStats(
        n=int(xs.size),
        median=float(np.percentile(xs, 50)),
        p90=float(np.percentile(xs, 90)),
        trimmed_mean=trimmed_mean(xs, trim),
        mean=float(xs.mean()),
        std=float(xs.std(ddof=1)) if xs.size > 1 else 0.0,
        min=float(xs.min()),
        max=float(xs.max()),
    )

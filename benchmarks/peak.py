"""This machine's fp32 GEMM ceiling, measured in the same run as the candidates.

Every GEMM available here (``torch.mm``, and each target runtime's own, from its backend's ``Target.gemm``)
becomes a harness candidate of kind ``peak``, timed round-robin with the model candidates so a
noisy host slows both alike. The ceiling is the fastest provider's best run, 2 n^3 FLOP / min time: a model
row's median GFLOP/s can only approach it, so "% of peak" stays at or under 100 % unless a model kernel
beats every GEMM we have (the report then says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mobileclip_export.benchmarks import harness as H

log = logging.getLogger(__name__)

GEMM_N = 1024  # n x n @ n x n fp32: 2.1 GFLOP, large enough to be compute-bound, short enough to interleave


def _torch_gemm(n: int, threads: int) -> tuple[H.RunFn, str]:
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(n, n, generator=gen), torch.rand(n, n, generator=gen)
    out = torch.empty(n, n)
    return (lambda feeds: torch.mm(a, b, out=out)), f"torch {torch.__version__} torch.mm"


def _target_gemms() -> dict[str, Callable[[int, int], tuple[H.RunFn, str]]]:
    """The GEMM each registered target's runtime offers (its backend builds it; no runtime is named here)."""
    from mobileclip_export.export.registry import all_targets

    return {t.gemm_name: t.gemm for t in all_targets().values() if t.gemm_name}


# Tried in order; a provider whose library is not installed (or fails to build) is left out and logged.
PROVIDERS: dict[str, Callable[[int, int], tuple[H.RunFn, str]]] = {
    "torch.mm": _torch_gemm,
    **_target_gemms(),
}


def gemm_candidates(threads: int, n: int = GEMM_N) -> list[H.Candidate]:
    """One peak candidate per GEMM provider; building happens in the harness's load step."""
    out = []
    for name, build in PROVIDERS.items():

        def load(build: Callable[[int, int], tuple[H.RunFn, str]] = build) -> tuple[H.RunFn, str, bool]:
            try:
                run, label = build(n, threads)
            except ImportError as err:
                raise H.RuntimeUnavailable(f"not installed: {err}") from err
            return run, label, True

        out.append(
            H.Candidate(target=name, encoder="gemm", precision="fp32", load=load, feeds={}, kind=H.PEAK)
        )
    return out


@dataclass(frozen=True)
class Peak:
    gflops: float
    source: str  # runtime label of the fastest GEMM
    providers: Mapping[str, float] = field(default_factory=dict)  # label -> best GFLOP/s of those that ran
    n: int = GEMM_N

    def to_settings(self) -> dict[str, Any]:
        return {
            "peak_matmul_gflops": self.gflops,
            "peak_source": self.source,
            "peak_providers_gflops": dict(self.providers),
            "peak_gemm_n": self.n,
        }


def peak_from(results: Sequence[H.Measurement], n: int = GEMM_N) -> Peak:
    """The ceiling from the timed peak candidates: best single run of the fastest provider."""
    rates = {}
    for m in results:
        if m.candidate.kind != H.PEAK:
            continue
        if m.samples_ms:
            rates[m.runtime] = 2.0 * n**3 / (min(m.samples_ms) / 1e3) / 1e9
        else:
            log.info("GEMM peak provider %s: %s", m.candidate.target, m.status)
    if not rates:
        raise RuntimeError("no GEMM peak provider could run (torch.mm should always be available)")
    source = max(rates, key=rates.__getitem__)
    return Peak(gflops=rates[source], source=source, providers=rates, n=n)

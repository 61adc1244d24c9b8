"""The GEMM peak: each provider runs a real GEMM at a plausible rate; the fastest one is the ceiling."""

from __future__ import annotations

import pytest

from mobileclip_export.benchmarks import harness as H
from mobileclip_export.benchmarks import peak


def _peak(monkeypatch, names: tuple[str, ...], n: int = 256) -> peak.Peak:
    monkeypatch.setattr(peak, "PROVIDERS", {k: v for k, v in peak.PROVIDERS.items() if k in names})
    results = H.measure(peak.gemm_candidates(1, n=n), runs=3, warmup=1)
    for m in results:
        assert m.status == "ok" or m.status.startswith("skipped: not installed"), m.status
    return peak.peak_from(results, n=n)


def test_torch_and_ort_gemm_peak(monkeypatch):
    pytest.importorskip("onnxruntime")  # a third-party runtime, optional by design
    p = _peak(monkeypatch, ("torch.mm", "onnxruntime MatMul"))
    assert len(p.providers) == 2 and p.gflops == max(p.providers.values())
    assert p.source in p.providers and p.to_settings()["peak_source"] == p.source
    assert all(0.1 < v < 1e4 for v in p.providers.values()), p.providers  # GFLOP/s of one core


def test_peak_needs_one_provider(monkeypatch):
    monkeypatch.setattr(peak, "PROVIDERS", {})
    with pytest.raises(RuntimeError, match="no GEMM peak provider"):
        peak.peak_from([])


@pytest.mark.slow
def test_xnnpack_gemm_peak(monkeypatch):
    pytest.importorskip("executorch")
    p = _peak(monkeypatch, ("XNNPACK",), n=512)
    assert "XNNPACK" in p.source and p.gflops > 0.1

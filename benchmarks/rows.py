"""One typed row of a benchmark report, for host measurements, failed exports and on-device measurements.

``to_dict()`` is the row as stored in ``report.json`` (``rows``); ``report.records_from_rows`` turns rows into
the flat metric records. Estimates for unreachable devices are modelled, not measured, and live apart
(``estimate.Estimate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TRAIN, REPARAM = "pytorch-train", "pytorch-reparam"  # the two PyTorch eager baselines, by row name

DEPLOYMENT = "deployment"


@dataclass
class ReportRow:
    target: str
    encoder: str
    precision: str
    kind: str = DEPLOYMENT  # "deployment" | "reference" | "baseline" (see harness)
    status: str = "ok"  # "ok" | "skipped: <why>" | "failed: <why>"
    runtime: str = ""
    artifact: str | None = None
    size_mb: float | None = None
    parity_cosine: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    rss_delta_mb: float | None = None
    latency: dict[str, float] | None = None  # stats.LatencyStats.to_dict()
    gmacs: float | None = None
    gflops_per_s: float | None = None
    fraction_of_peak: float | None = None
    speedup_vs_reparam: float | None = None
    notes: list[str] = field(default_factory=list)
    record_kind: str = "host"  # "host" | "device"
    device: dict[str, Any] | None = None  # set for device rows; host rows use the report's device
    guard: dict[str, Any] | None = None  # accuracy guard of a compressed artifact (candidates.guard_figures)
    variant: str | None = None  # which of an artifact's rows (runtime, threads) when a target times several
    extra: dict[str, Any] | None = None  # the target's own fields (Target.bench_fields)

    @property
    def median_ms(self) -> float | None:
        return self.latency.get("median") if self.latency else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _speedups(results: Sequence[Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Per encoder: the train-time PyTorch output (parity reference) and the reparameterized median."""

    reference = {m.candidate.encoder: m.output for m in results if m.candidate.target == TRAIN}
    reparam = {
        m.candidate.encoder: m.stats.median for m in results if m.candidate.target == REPARAM and m.stats
    }
    return {k: v for k, v in reference.items() if v is not None}, reparam


def host_rows(results: Sequence[Any], macs: Mapping[str, Any], peak_gflops: float) -> list[ReportRow]:
    """Rows for the timed host candidates (``harness.Measurement``), peak GEMMs left out."""
    from mobileclip_export.benchmarks import harness as H

    reference, reparam_median = _speedups(results)
    rows = []
    for m in results:
        c = m.candidate
        if c.kind == H.PEAK:
            continue
        row = ReportRow(
            target=c.target,
            encoder=c.encoder,
            precision=c.precision,
            kind=c.kind,
            status=m.status,
            runtime=m.runtime,
            artifact=c.artifact,
            size_mb=c.size_bytes / 1e6 if c.size_bytes else None,
            load_ms=m.load_ms if c.kind != H.BASELINE else None,
            first_ms=m.first_ms,
            rss_delta_mb=m.rss_delta_mb,
            latency=m.stats.to_dict() if m.stats else None,
            gmacs=macs[c.encoder].gmacs,
            notes=list(c.notes),
            guard=c.guard,
            variant=c.variant,
            extra=dict(c.fields) if c.fields else None,
        )
        _finish(row, m.output, reference, reparam_median, macs, peak_gflops)
        rows.append(row)
    return rows


def _finish(
    row: ReportRow,
    output: Any,
    reference: Mapping[str, Any],
    reparam_median: Mapping[str, float],
    macs: Mapping[str, Any],
    peak_gflops: float,
) -> None:
    """Parity against the train-time output, achieved GFLOP/s, share of peak, speedup vs reparam PyTorch."""
    from mobileclip_export.benchmarks import harness as H
    from mobileclip_export.export.parity import compare

    ref = reference.get(row.encoder)
    if output is not None and ref is not None and row.target != TRAIN:
        try:
            row.parity_cosine = compare(ref, output.reshape(ref.shape)).cosine
        except ValueError as err:
            row.status = f"failed: output shape {output.shape} vs reference {ref.shape} ({err})"
    if row.median_ms:
        row.gflops_per_s = 2 * macs[row.encoder].macs / 1e9 / (row.median_ms / 1e3)
        row.fraction_of_peak = row.gflops_per_s / peak_gflops
        if row.kind != H.REFERENCE and row.encoder in reparam_median:
            row.speedup_vs_reparam = reparam_median[row.encoder] / row.median_ms


def external_rows(
    target: str,
    timings: Sequence[Any],
    results: Sequence[Any],
    macs: Mapping[str, Any],
    peak_gflops: float,
) -> list[ReportRow]:
    """Rows for a target's measurements taken outside this process (``spec.ExternalTiming``), with the
    same parity and speed figures as the timed rows (same inputs, same train-time reference)."""
    from mobileclip_export.benchmarks.stats import summarize

    reference, reparam_median = _speedups(results)
    rows = []
    for t in timings:
        if t.encoder not in macs:
            continue
        row = ReportRow(
            target=target,
            encoder=t.encoder,
            precision=t.precision,
            status=t.status,
            runtime=t.runtime,
            artifact=t.artifact,
            size_mb=t.size_bytes / 1e6 if t.size_bytes else None,
            load_ms=t.load_ms,
            first_ms=t.first_ms,
            latency=summarize(t.samples_ms).to_dict() if t.samples_ms and t.status == "ok" else None,
            gmacs=macs[t.encoder].gmacs,
            variant=t.variant,
            extra=dict(t.fields) if t.fields else None,
        )
        _finish(row, t.output, reference, reparam_median, macs, peak_gflops)
        rows.append(row)
    return rows


def ratios(rows: Sequence[Mapping[str, Any]], reference_export: str) -> list[dict[str, Any]]:
    """Per encoder, every timed host row's median against the fastest artifact's and the reference export's.

    Medians of one interleaved run, so the ratios hold on a noisy machine where the absolute figures do not.
    Reference runtimes (emulators) and device rows are left out; ``vs_reference_export`` is None when no
    reference export was timed for that encoder.
    """
    timed = [
        r
        for r in rows
        if r.get("record_kind", "host") == "host"
        and r.get("kind") != "reference"
        and (r.get("latency") or {}).get("median")
    ]
    out = []
    for encoder in sorted({r["encoder"] for r in timed}):
        mine = [r for r in timed if r["encoder"] == encoder]
        artifacts = [r["latency"]["median"] for r in mine if r.get("kind") == DEPLOYMENT]
        fastest = min(artifacts) if artifacts else None
        ref = next((r["latency"]["median"] for r in mine if r["target"] == reference_export), None)
        for r in sorted(mine, key=lambda r: r["latency"]["median"]):
            median = r["latency"]["median"]
            out.append(
                {
                    "encoder": encoder,
                    "target": r["target"],
                    "variant": r.get("variant"),
                    "precision": r["precision"],
                    "kind": r.get("kind"),
                    "median_ms": median,
                    "vs_fastest_artifact": median / fastest if fastest else None,
                    "vs_reference_export": median / ref if ref else None,
                }
            )
    return out

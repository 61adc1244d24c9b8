"""Regression gate: compare this run's median latencies against a baseline report.

A row is matched on (backend, encoder, precision) among measured records (kind ``host`` or ``device``;
estimates
never gate). Change = (new - old) / old. The gate fails when any matched row is slower by more than the
threshold; faster rows, rows within the threshold, and rows present on one side only never fail (they are
listed as such).

Latency is only comparable on the same machine: a baseline whose host fingerprint (CPU model, cores, threads,
runtime versions) differs from this run's is compared and reported, but never gates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.report import GATE_METRIC, SCHEMA
from mobileclip_export.errors import UsageError


@dataclass(frozen=True)
class RowChange:
    key: str
    old_ms: float | None
    new_ms: float | None

    @property
    def change_pct(self) -> float | None:
        if self.old_ms is None or self.new_ms is None or self.old_ms <= 0:
            return None
        return (self.new_ms - self.old_ms) / self.old_ms * 100.0


@dataclass(frozen=True)
class GateResult:
    threshold_pct: float
    changes: list[RowChange]
    host_differences: tuple[str, ...] = ()  # non-empty: baseline from another host, reported without gating

    @property
    def regressions(self) -> list[RowChange]:
        return [c for c in self.changes if c.change_pct is not None and c.change_pct > self.threshold_pct]

    @property
    def gated(self) -> bool:
        return not self.host_differences

    @property
    def passed(self) -> bool:
        return not self.gated or not self.regressions

    def lines(self) -> list[str]:
        out = []
        for c in self.changes:
            pct = c.change_pct
            if c.old_ms is None:
                out.append(f"  new       {c.key}: {c.new_ms:.3f} ms (not in baseline)")
            elif c.new_ms is None:
                out.append(f"  missing   {c.key}: baseline {c.old_ms:.3f} ms, not measured now")
            else:
                verdict = "REGRESSED" if pct is not None and pct > self.threshold_pct else "ok"
                out.append(f"  {verdict:<9} {c.key}: {c.old_ms:.3f} -> {c.new_ms:.3f} ms ({pct:+.1f}%)")
        head = (
            "PASSED"
            if not self.regressions
            else f"FAILED ({len(self.regressions)} row(s) slower than +{self.threshold_pct:g}%)"
        )
        if not self.gated:
            head = (
                f"NOT GATED, baseline from another host ({'; '.join(self.host_differences)}); would be {head}"
            )
        return [
            f"regression gate vs baseline, threshold +{self.threshold_pct:g}% on median latency: {head}",
            *out,
        ]


def medians(doc: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in doc.get("records", []):
        if rec.get("metric") != GATE_METRIC or rec.get("kind") not in ("host", "device"):
            continue
        bm = rec["benchmarkModel"]
        key = f"{bm['backend']}/{bm['encoder']}/{bm['precision']}"
        out[key + ("@device" if rec["kind"] == "device" else "")] = float(rec["actualValue"])
    return out


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UsageError(f"baseline file {str(path)!r} does not exist") from err
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"baseline file {str(path)!r} is not readable JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(
            f"baseline file {str(path)!r} is not a benchmark report (expected schema {SCHEMA!r})"
        )
    problem = baseline_problem(doc)
    if problem:
        raise UsageError(f"baseline file {str(path)!r}: {problem}; nothing was measured")
    return doc


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _record_problem(i: int, rec: Any) -> str | None:
    """What is wrong with ``records[i]`` for the gate (it reads the measured median latencies)."""
    if not isinstance(rec, dict):
        return f"records[{i}] is a {type(rec).__name__}, not an object"
    if rec.get("metric") != GATE_METRIC or rec.get("kind") not in ("host", "device"):
        return None
    bm = rec.get("benchmarkModel")
    if not isinstance(bm, dict):
        return f"records[{i}] ({GATE_METRIC}) has no benchmarkModel object"
    missing = [k for k in ("backend", "encoder", "precision") if not isinstance(bm.get(k), str)]
    if missing:
        return f"records[{i}] ({GATE_METRIC}) benchmarkModel lacks text field(s) {', '.join(missing)}"
    value = rec.get("actualValue")
    if not _number(value) or value < 0:
        name = f"{bm['backend']}/{bm['encoder']}/{bm['precision']}"
        return f"records[{i}] ({name}, {GATE_METRIC}) actualValue is {value!r}, not a latency in ms"
    return None


def baseline_problem(doc: Mapping[str, Any]) -> str | None:
    """The first field of a report the gate cannot use (None when it can): checked before any timing."""
    for key in ("records", "rows"):
        if not isinstance(doc.get(key, []), list):
            return f"{key!r} is a {type(doc[key]).__name__}, not a list"
    for key in ("device", "settings"):
        if not isinstance(doc.get(key) or {}, dict):
            return f"{key!r} is a {type(doc[key]).__name__}, not an object"
    for i, rec in enumerate(doc.get("records", [])):
        problem = _record_problem(i, rec)
        if problem:
            return problem
    for i, row in enumerate(doc.get("rows", [])):
        if not isinstance(row, dict):
            return f"rows[{i}] is a {type(row).__name__}, not an object"
        missing = [k for k in ("target", "encoder", "precision") if k not in row]
        if row.get("runtime") and row.get("latency") and missing:
            return f"rows[{i}] lacks {', '.join(missing)}"
    return None


def host_fingerprint(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What must match for latencies to be comparable: CPU model, cores, threads and, per measured row,
    the runtime with its version."""
    from mobileclip_export.benchmarks.report import row_key

    device, settings = doc.get("device") or {}, doc.get("settings") or {}
    rows = doc.get("rows") or []
    return {
        "cpu": device.get("cpu"),
        "cores": device.get("cores"),
        "threads": settings.get("threads"),
        "runtimes": {row_key(r): r["runtime"] for r in rows if r.get("runtime") and r.get("latency")},
    }


def host_differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, ...]:
    """Why the baseline is not comparable (empty when it is); rows on one side only do not count."""
    old, new = host_fingerprint(baseline), host_fingerprint(current)
    out = [f"{k}: {old[k]!r} vs now {new[k]!r}" for k in ("cpu", "cores", "threads") if old[k] != new[k]]
    rt_old, rt_new = old["runtimes"], new["runtimes"]
    out += [
        f"{k} runtime: {rt_old[k]!r} vs now {rt_new[k]!r}"
        for k in rt_new
        if rt_old.get(k, rt_new[k]) != rt_new[k]
    ]
    return tuple(out)


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any], threshold_pct: float) -> GateResult:
    if threshold_pct < 0:
        raise UsageError(f"--fail-on-regression must be >= 0, got {threshold_pct}")
    old, new = medians(baseline), medians(current)
    keys = list(new) + [k for k in old if k not in new]
    changes = [RowChange(k, old.get(k), new.get(k)) for k in keys]
    return GateResult(threshold_pct, changes, host_differences(baseline, current))

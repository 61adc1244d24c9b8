"""The benchmark report document (``report.json``) and its JSONL history.

JSON document (``report.json``), schema ``mobileclip-export.bench/1``::

    {
      "schema": "mobileclip-export.bench/1",
      "created_utc": "2026-01-01T12:00:00Z",
      "model": {"name": "mobileclip_s0", "random_init": true, "reduced": false},
      "device": {"name", "os", "cpu", "cores", "threads", "kind": "host"},
      "settings": {"runs", "warmup", "threads", "peak_matmul_gflops", "interleaved": true},
      "rows": [ one summary per candidate: target, encoder, precision, kind (deployment|reference|baseline),
                status, runtime, artifact, size_mb, parity_cosine, load_ms, first_ms, rss_delta_mb,
                latency {n, median, p90, trimmed_mean, mean, std, min, max} (ms), gmacs, gflops_per_s,
                fraction_of_peak, speedup_vs_reparam, guard (compressed artifacts: status, cosine,
                max_abs_diff, top1_agreement, top5_agreement, mean_abs_prob_change, kept_fp_layers),
                variant (which of an artifact's rows, when its target times several: runtime and
                threads), extra (the target's own fields, e.g. a leaderboard's names) ],
      "records": [ flat metric records, shaped like ExecuTorch's benchmark results:
                   {"benchmarkModel": {"name", "backend", "precision", "quantization", "encoder"},
                    "metric": "median_inference_latency(ms)", "actualValue": 3.2, "unit": "ms",
                    "device": {...}, "kind": "host" | "device" | "estimate", "runtime": "..."} ],
      "estimates": [ {device, encoder, latency_ms, method, error_note, inputs} ],
      "scorecard": only when an artifact carries --eval-dir figures (``scorecard.py``): {images, classes,
                   rows: [torch fp32, then target x precision x encoder: top1, drop_points, top1_agreement,
                   cosine_mean, cosine_min, guard]}
    }

``kind`` is never omitted: host numbers are proxies, device numbers come from a phone, estimates are modelled.
Baselines (PyTorch eager, train-time and reparameterized) use backend names ``pytorch-train`` /
``pytorch-reparam``. Reference-runtime latencies keep ``kind: host`` but their row says ``kind: reference``
and
they carry no speedup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "mobileclip-export.bench/1"

# metric name -> (row field or latency field, unit). Latency metric names follow ExecuTorch's benchmark apps.
ROW_METRICS: tuple[tuple[str, str, str], ...] = (
    ("model_load_time(ms)", "load_ms", "ms"),
    ("first_inference_latency(ms)", "first_ms", "ms"),
    ("peak_rss_delta(mb)", "rss_delta_mb", "MB"),
    ("artifact_size(mb)", "size_mb", "MB"),
    ("parity_cosine", "parity_cosine", ""),
    ("gmacs", "gmacs", "GMAC"),
    ("achieved_gflops", "gflops_per_s", "GFLOP/s"),
    ("fraction_of_peak", "fraction_of_peak", ""),
    ("speedup_vs_reparam_pytorch", "speedup_vs_reparam", "x"),
)
LATENCY_METRICS: tuple[tuple[str, str], ...] = (
    ("median_inference_latency(ms)", "median"),
    ("p90_inference_latency(ms)", "p90"),
    ("trimmean_inference_latency(ms)", "trimmed_mean"),
    ("avg_inference_latency(ms)", "mean"),
    ("std_inference_latency(ms)", "std"),
    ("num_runs", "n"),
)
GATE_METRIC = "median_inference_latency(ms)"


def row_key(row: Mapping[str, Any]) -> str:
    """Identity of a row across runs; device rows are kept apart from host rows of the same artifact."""
    key = f"{row['target']}/{row['encoder']}/{row['precision']}"
    key += f"/{row['variant']}" if row.get("variant") else ""
    return key + "@device" if row.get("record_kind") == "device" else key


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v))


def model_block(model: str, row: Mapping[str, Any]) -> dict[str, Any]:
    block = {
        "name": model,
        "backend": row["target"],
        "precision": row["precision"],
        "quantization": row["precision"],
        "encoder": row["encoder"],
    }
    if row.get("variant"):
        block["variant"] = row["variant"]
    return block


def records_from_rows(
    model: str, rows: Iterable[Mapping[str, Any]], device: Mapping[str, Any], kind: str = "host"
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        bm = model_block(model, row)
        base = {
            "device": dict(row.get("device") or device),
            "kind": row.get("record_kind", kind),
            "runtime": row.get("runtime", ""),
        }
        for metric, fld, unit in ROW_METRICS:
            if _finite(row.get(fld)):
                out.append(
                    {"benchmarkModel": bm, "metric": metric, "actualValue": row[fld], "unit": unit, **base}
                )
        lat = row.get("latency") or {}
        for metric, fld in LATENCY_METRICS:
            if _finite(lat.get(fld)):
                unit = "" if fld == "n" else "ms"
                out.append(
                    {"benchmarkModel": bm, "metric": metric, "actualValue": lat[fld], "unit": unit, **base}
                )
    return out


def estimate_records(
    model: str, estimates: Iterable[Mapping[str, Any]], precision: str = "fp16"
) -> list[dict[str, Any]]:
    return [
        {
            "benchmarkModel": {
                "name": model,
                "backend": "estimate",
                "precision": precision,
                "quantization": precision,
                "encoder": e["encoder"],
            },
            "metric": "estimated_inference_latency(ms)",
            "actualValue": e["latency_ms"],
            "unit": "ms",
            "device": {"name": e["device"], "os": "", "cpu": "", "cores": None, "threads": None},
            "kind": "estimate",
            "runtime": e["method"],
            "error_note": e["error_note"],
        }
        for e in estimates
    ]


def build_document(
    *,
    model: Mapping[str, Any],
    device: Mapping[str, Any],
    settings: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    estimates: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    from .scorecard import scorecard

    card = scorecard(rows)
    return {
        **({"scorecard": card} if card else {}),
        "schema": SCHEMA,
        "created_utc": utc_now(),
        "model": dict(model),
        "device": dict(device),
        "settings": dict(settings),
        "rows": [dict(r) for r in rows],
        "records": records_from_rows(model["name"], rows, device)
        + estimate_records(model["name"], estimates),
        "estimates": [dict(e) for e in estimates],
    }


def validate_document(doc: Mapping[str, Any]) -> list[str]:
    """Problems with a report document; empty when it matches the schema above."""
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("model", "device", "settings", "rows", "records"):
        if key not in doc:
            problems.append(f"missing key {key!r}")
    for i, rec in enumerate(doc.get("records", [])):
        for key in ("benchmarkModel", "metric", "actualValue", "unit", "device", "kind"):
            if key not in rec:
                problems.append(f"record {i} misses {key!r}")
        if rec.get("kind") not in ("host", "device", "estimate"):
            problems.append(f"record {i} has kind {rec.get('kind')!r}")
        bm = rec.get("benchmarkModel", {})
        for key in ("name", "backend", "precision", "encoder"):
            if key not in bm:
                problems.append(f"record {i} benchmarkModel misses {key!r}")
        if not _finite(rec.get("actualValue")):
            problems.append(f"record {i} actualValue is not a finite number")
    return problems


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def append_history(path: Path, doc: Mapping[str, Any]) -> None:
    """One line per run: when, where, and the gate metric of every row - enough to chart a trend."""
    line = {
        "created_utc": doc["created_utc"],
        "model": doc["model"],
        "device": doc["device"],
        "settings": doc["settings"],
        "median_ms": {row_key(r): (r.get("latency") or {}).get("median") for r in doc["rows"]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")

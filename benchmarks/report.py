"""Benchmark reports: JSON document, Markdown table, PNG plots, JSONL history.

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
                max_abs_diff, top1_agreement, top5_agreement, mean_abs_prob_change, kept_fp_layers) ],
      "records": [ flat metric records, shaped like ExecuTorch's benchmark results:
                   {"benchmarkModel": {"name", "backend", "precision", "quantization", "encoder"},
                    "metric": "median_inference_latency(ms)", "actualValue": 3.2, "unit": "ms",
                    "device": {...}, "kind": "host" | "device" | "estimate", "runtime": "..."} ],
      "estimates": [ {device, encoder, latency_ms, method, error_note, inputs} ]
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
    return key + "@device" if row.get("record_kind") == "device" else key


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v))


def model_block(model: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": model,
        "backend": row["target"],
        "precision": row["precision"],
        "quantization": row["precision"],
        "encoder": row["encoder"],
    }


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
    return {
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


# ---------------------------------------------------------------- Markdown


def _fmt(v: Any, digits: int = 2) -> str:
    if not _finite(v):
        return "—"
    return f"{v:.{digits}f}"


def _sci(v: Any) -> str:
    return "—" if not _finite(v) else f"{v:.1e}"


def _cos(v: Any) -> str:
    return "—" if not _finite(v) else f"{v:.6f}"


def _peak_sentence(st: Mapping[str, Any]) -> str:
    """Which GEMM set the "% of peak" ceiling, and what the others reached (older reports: torch.mm only)."""
    peak = _fmt(st.get("peak_matmul_gflops"), 1)
    source = st.get("peak_source") or "torch.mm"
    others = "; ".join(
        f"{label} {_fmt(v, 1)}"
        for label, v in (st.get("peak_providers_gflops") or {}).items()
        if label != source
    )
    n = st.get("peak_gemm_n")
    size = f"{n}x{n} " if n else ""
    text = f'fp32 GEMM peak (the "% of peak" ceiling), {size}timed with the candidates: {peak} GFLOP/s'
    return text + f" from {source}" + (f" (others: {others} GFLOP/s)." if others else ".")


def _row_line(r: Mapping[str, Any], notes: list[str]) -> str:
    lat = r.get("latency") or {}
    status = r["status"]
    if status.startswith(("skipped", "failed")):
        notes.append(f"- `{r['target']}` {r['encoder']} {r['precision']}: {status}")
        status = status.split(":", 1)[0]
    median = _fmt(lat.get("median"))
    speed = "×" + _fmt(r.get("speedup_vs_reparam")) if _finite(r.get("speedup_vs_reparam")) else "—"
    if r.get("kind") == "reference":
        median += " (reference runtime)"
        speed = "— (reference runtime)"
    frac = r.get("fraction_of_peak")
    where = f" (device: {r['device']['name']})" if r.get("record_kind") == "device" else ""
    return (
        f"| {r['target']}{where} | {r['encoder']} | {r['precision']} | {status} | "
        f"{_fmt(r.get('size_mb'))} | "
        f"{_cos(r.get('parity_cosine'))} | {_fmt(r.get('load_ms'), 1)} | {_fmt(r.get('first_ms'))} | "
        f"{median} | {_fmt(lat.get('p90'))} | {_fmt(r.get('gflops_per_s'), 1)} | "
        f"{_fmt(frac * 100 if _finite(frac) else None, 1)} | {speed} |"
    )


def _footnotes(doc: Mapping[str, Any], notes: list[str]) -> list[str]:
    refs = sorted({r["runtime"] for r in doc["rows"] if r.get("kind") == "reference" and r.get("runtime")})
    above = sorted(
        {r["target"] for r in doc["rows"] if _finite(r.get("fraction_of_peak")) and r["fraction_of_peak"] > 1}
    )
    lines = [
        "",
        "parity cos: worst per-row cosine vs the train-time PyTorch model on the benchmark inputs. "
        "Speedup = reparameterized PyTorch median / this median (>1 is faster), same run.",
    ]
    if above:
        lines.append(
            f"Above 100 % of peak ({', '.join(above)}): those kernels beat every GEMM measured here, so the "
            "measured peak is not this machine's ceiling."
        )
    if refs:
        lines.append(
            "Reference runtimes (not the deployment runtime; latency not comparable): " + "; ".join(refs)
        )
    if notes:
        lines += ["", "Not measured here:", *notes]
    row_notes = [
        f"- `{r['target']}` {r['encoder']} {r['precision']}: {n}"
        for r in doc["rows"]
        for n in r.get("notes") or []
    ]
    if row_notes:
        lines += ["", "Notes:", *row_notes]
    return lines


def _guard_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Accuracy-guard figures of the compressed artifacts (from their manifests), next to their size."""
    guarded = [r for r in rows if r.get("guard")]
    if not guarded:
        return []
    lines = [
        "",
        "### Accuracy guard (compressed artifacts vs the fp32 train-time model, from the export)",
        "",
        "| target | encoder | precision | size MB | guard | cosine | top-1 agree | top-5 agree "
        "| mean abs dprob | kept fp layers |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in guarded:
        g = r["guard"]
        kept = ", ".join(g.get("kept_fp_layers") or []) or "—"
        lines.append(
            f"| {r['target']} | {r['encoder']} | {r['precision']} | {_fmt(r.get('size_mb'))} | "
            f"{g.get('status', '—')} | {_cos(g.get('cosine'))} | {_fmt(g.get('top1_agreement'), 3)} | "
            f"{_fmt(g.get('top5_agreement'), 3)} | {_sci(g.get('mean_abs_prob_change'))} | {kept} |"
        )
    return lines


def _estimates_table(estimates: list[Mapping[str, Any]]) -> list[str]:
    lines = [
        "",
        "### Estimates (kind `estimate`: modelled, not measured)",
        "",
        "| device | encoder | estimated ms | error of the method | method |",
        "|---|---|---:|---|---|",
    ]
    for e in estimates:
        lines.append(
            f"| {e['device']} | {e['encoder']} | {_fmt(e['latency_ms'])} | {e['error_note']} | "
            f"{e['method']} |"
        )
    return lines


def markdown(doc: Mapping[str, Any]) -> str:
    dev, st, mdl = doc["device"], doc["settings"], doc["model"]
    weights = "seeded random weights" if mdl.get("random_init") else "checkpoint weights"
    size = "reduced" if mdl.get("reduced") else "full size"
    lines = [
        f"## Benchmark: {mdl['name']} ({size}, {weights})",
        "",
        f"**Host** (kind `host`: a proxy, not a phone): {dev['cpu']}, {dev['cores']} cores, {dev['os']}; "
        f"{st['threads']} thread(s), process pinned to cores {st.get('pinned_cores', '?')}. "
        f"{st['runs']} timed runs after {st['warmup']} warm-up, interleaved "
        f"round-robin across candidates. {_peak_sentence(st)}",
        "",
        "| target | encoder | precision | status | size MB | parity cos | load ms | first ms | median ms "
        "| p90 ms | GFLOP/s | % of peak | speedup vs reparam PyTorch |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    lines += [_row_line(r, notes) for r in doc["rows"]]
    lines += _footnotes(doc, notes)
    lines += _guard_table(doc["rows"])
    if doc.get("estimates"):
        lines += _estimates_table(doc["estimates"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def plots(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """latency.png (median + p90 per target and encoder) and latency_vs_size.png. Needs matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if (r.get("latency") or {}).get("median") is not None]
    if not rows:
        return []
    encoders = sorted({r["encoder"] for r in rows})
    written = [_latency_plot(plt, doc, rows, encoders, out_dir / "latency.png")]
    sized = [r for r in rows if _finite(r.get("size_mb"))]
    if sized:
        written.append(_size_plot(plt, doc, sized, encoders, out_dir / "latency_vs_size.png"))
    return written


def _latency_plot(plt: Any, doc: Mapping[str, Any], rows: list, encoders: list[str], path: Path) -> Path:
    labels = sorted({(r["target"], r["precision"]) for r in rows})
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) * len(encoders) + 1.5))
    height = 0.8 / len(encoders)
    for j, enc in enumerate(encoders):
        for i, (target, precision) in enumerate(labels):
            row = next(
                (r for r in rows if (r["target"], r["precision"], r["encoder"]) == (target, precision, enc)),
                None,
            )
            if row is None:
                continue
            med, p90 = row["latency"]["median"], row["latency"]["p90"]
            ax.barh(
                i + j * height,
                med,
                height,
                color=f"C{j}",
                hatch="//" if row.get("kind") == "reference" else "",
                xerr=[[0], [max(p90 - med, 0)]],
                capsize=2,
            )
    ax.set_yticks([i + height * (len(encoders) - 1) / 2 for i in range(len(labels))])
    ax.set_yticklabels([f"{t} {p}" for t, p in labels])
    # Log scale: reference runtimes are 100-1000x slower and would flatten every other bar.
    ax.set_xscale("log")
    ax.set_xlabel("median latency, ms, log scale (whisker: p90; hatched: reference runtime)")
    ax.set_title(f"{doc['model']['name']} on {doc['device']['cpu']} ({doc['settings']['threads']} thr, host)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=f"C{j}", label=enc) for j, enc in enumerate(encoders)], title="encoder")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _size_plot(plt: Any, doc: Mapping[str, Any], sized: list, encoders: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for j, enc in enumerate(encoders):
        pts = [r for r in sized if r["encoder"] == enc]
        for ref in (False, True):
            sel = [r for r in pts if (r.get("kind") == "reference") is ref]
            ax.scatter(
                [r["size_mb"] for r in sel],
                [r["latency"]["median"] for r in sel],
                edgecolors=f"C{j}",
                facecolors="none" if ref else f"C{j}",
                label=(f"{enc} (reference runtime)" if ref else enc) if sel else None,
            )
        for k, r in enumerate(pts):
            ax.annotate(
                f"{r['target']} {r['precision']}",
                (r["size_mb"], r["latency"]["median"]),
                fontsize=7,
                xytext=(4, 4 - 9 * (k % 3)),
                textcoords="offset points",
            )
    ax.set_xlabel("size, MB")
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms, log scale (host)")
    ax.set_title(f"{doc['model']['name']}: latency vs size")
    ax.legend(title="encoder")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The report as Markdown: one table per encoder, footnotes, guard and estimate tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mobileclip_export.benchmarks.report.document import _finite
from mobileclip_export.benchmarks.report.scorecard import scorecard_lines


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


def label(r: Mapping[str, Any]) -> str:
    """The row's target, with its variant when the target times an artifact several ways."""
    return f"{r['target']} ({r['variant']})" if r.get("variant") else str(r["target"])


def _row_line(r: Mapping[str, Any], notes: list[str]) -> str:
    lat = r.get("latency") or {}
    status = r["status"]
    if status.startswith(("skipped", "failed")):
        notes.append(f"- `{label(r)}` {r['encoder']} {r['precision']}: {status}")
        status = status.split(":", 1)[0]
    median = _fmt(lat.get("median"))
    speed = "×" + _fmt(r.get("speedup_vs_reparam")) if _finite(r.get("speedup_vs_reparam")) else "—"
    if r.get("kind") == "reference":
        median += " (reference runtime)"
        speed = "— (reference runtime)"
    frac = r.get("fraction_of_peak")
    where = f" (device: {r['device']['name']})" if r.get("record_kind") == "device" else ""
    return (
        f"| {label(r)}{where} | {r['encoder']} | {r['precision']} | {status} | "
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


def _ratio(v: Any) -> str:
    return "x" + _fmt(v, 3) if _finite(v) else "—"


def _ratios_table(ratios: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each timed row's median over the fastest artifact's and over the reference export's (same run)."""
    if not ratios:
        return []
    lines = [
        "",
        "### Ratios (medians of this run; >1 is slower)",
        "",
        "| encoder | target | precision | median ms | vs fastest artifact | vs reference export |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['encoder']} | {label(r)} | {r['precision']} | {_fmt(r['median_ms'])} | "
            f"{_ratio(r['vs_fastest_artifact'])} | {_ratio(r['vs_reference_export'])} |"
        )
    return lines


def _variants_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Side by side: the runtimes and thread counts a target timed each of its files in (median / p90 ms)."""
    mine = [r for r in rows if r.get("variant")]
    variants = sorted({r["variant"] for r in mine})
    if not mine:
        return []
    lines = [
        "",
        "### Side by side (one file, several runtimes and thread counts; median / p90 ms, load ms)",
        "",
        "| target | encoder | precision | " + " | ".join(variants) + " |",
        "|---|---|---|" + "---:|" * len(variants),
    ]
    groups = sorted({(r["target"], r["encoder"], r["precision"]) for r in mine})
    for target, encoder, precision in groups:
        cells = []
        for v in variants:
            r = next((r for r in mine if (r["target"], r["encoder"], r["precision"], r["variant"]) ==
                      (target, encoder, precision, v)), None)  # fmt: skip
            lat = (r or {}).get("latency") or {}
            cells.append(
                f"{_fmt(lat.get('median'))} / {_fmt(lat.get('p90'))} (load {_fmt(r.get('load_ms'), 0)})"
                if r and lat
                else "—"
            )
        lines.append(f"| {target} | {encoder} | {precision} | " + " | ".join(cells) + " |")
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
    from mobileclip_export.benchmarks.report import batches

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
    lines += _variants_table(doc["rows"])
    lines += batches.markdown_table(doc.get("throughput") or [], doc["settings"].get("throughput"))
    lines += _ratios_table(doc.get("ratios") or [])
    lines += _guard_table(doc["rows"])
    lines += scorecard_lines(doc.get("scorecard"))
    if doc.get("estimates"):
        lines += _estimates_table(doc["estimates"])
    return "\n".join(lines) + "\n"

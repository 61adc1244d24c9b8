"""The ``--batch-sizes`` part of a report: a Markdown table and ``throughput.png`` (inputs per second against
batch size, one line per runtime and encoder). Rows come from ``benchmarks/throughput.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _who(r: Mapping[str, Any]) -> str:
    return f"{r['target']} {r['precision']}"


def markdown_table(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None) -> list[str]:
    if not rows:
        return []
    st = settings or {}
    lines = [
        "",
        f"### Throughput by batch size ({', '.join(map(str, st.get('batch_sizes', [])))})",
        "",
        "Per row: B inputs handed to the runtime as predict/index do (one call when the artifact takes "
        "batches, else row by row); median of one batch of B, per input (image or caption) and inputs per "
        "second. Peak RSS: the process high-water mark while the row ran "
        f"({rows[0].get('peak_rss_method') or 'VmHWM reset per row'}); over load: minus the RSS before the "
        "artifact was loaded. Runtimes timed one after another, not interleaved.",
        "",
        "| target | encoder | artifact batch | B | calls | ms / batch | ms / input | inputs / s "
        "| peak RSS MB | over load MB | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        median = (r.get("latency") or {}).get("median")
        lines.append(
            f"| {_who(r)} | {r['encoder']} | {r['artifact_batch']} | {r['batch_size']} | "
            f"{r.get('calls_per_batch') or '-'} | {_f(median, 2)} | {_f(r.get('ms_per_item'), 2)} | "
            f"{_f(r.get('items_per_s'))} | {_f(r.get('peak_rss_mb'), 0)} | "
            f"{_f(r.get('peak_over_load_mb'), 0)} | {r['status']} |"
        )
    return lines


def plot(plt: Any, doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """throughput.png: inputs per second against batch size (log2 x), one panel per encoder."""
    rows = [r for r in doc.get("throughput") or [] if r.get("items_per_s")]
    if not rows:
        return []
    encoders = sorted({r["encoder"] for r in rows})
    fig, axes = plt.subplots(1, len(encoders), figsize=(6 * len(encoders), 4), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        mine = [r for r in rows if r["encoder"] == enc]
        for who in sorted({_who(r) for r in mine}):
            pts = sorted((r["batch_size"], r["items_per_s"]) for r in mine if _who(r) == who)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=who)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s" if enc == "image" else "captions / s")
        ax.set_title(f"{doc['model']['name']} {enc}, {doc['settings'].get('threads', '?')} thread(s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]

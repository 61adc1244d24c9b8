"""The report as PNG plots: latency per target and encoder, latency against size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks.report.document import _finite
from mobileclip_export.benchmarks.report.markdown import label


def plots(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """latency.png (median + p90 per target and encoder) and latency_vs_size.png. Needs matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobileclip_export.benchmarks.report.batches import plot as throughput_plot

    rows = [r for r in doc["rows"] if (r.get("latency") or {}).get("median") is not None]
    if not rows:
        return throughput_plot(plt, doc, out_dir)
    encoders = sorted({r["encoder"] for r in rows})
    written = throughput_plot(plt, doc, out_dir)
    written.append(_latency_plot(plt, doc, rows, encoders, out_dir / "latency.png"))
    sized = [r for r in rows if _finite(r.get("size_mb"))]
    if sized:
        written.append(_size_plot(plt, doc, sized, encoders, out_dir / "latency_vs_size.png"))
    return written


def _latency_plot(plt: Any, doc: Mapping[str, Any], rows: list, encoders: list[str], path: Path) -> Path:
    labels = sorted({(label(r), r["precision"]) for r in rows})
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) * len(encoders) + 1.5))
    height = 0.8 / len(encoders)
    for j, enc in enumerate(encoders):
        for i, (target, precision) in enumerate(labels):
            row = next(
                (r for r in rows if (label(r), r["precision"], r["encoder"]) == (target, precision, enc)),
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
                f"{label(r)} {r['precision']}",
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

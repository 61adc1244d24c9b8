"""``matrix.json`` / ``matrix.md`` / ``matrix.png``: one row per cell, written atomically."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from mobileclip_export.export.bundle.layout import write_json_atomic
from mobileclip_export.export.pipeline.progress import human_bytes

log = logging.getLogger(__name__)

COLUMNS = ("model", "target", "precision", "encoder", "status", "reused", "cosine", "max_abs_diff", "bytes",
           "export_s", "verify_s", "run_s", "attempts", "node")
STATUS_CODE = {"verified": 0, "unverified": 1, "failed": 2}


def row_for(cell: dict[str, Any], reused: bool) -> dict[str, Any]:
    job, rec = cell["job"], cell["record"]
    parity, secs = rec.get("parity") or {}, rec.get("seconds") or {}
    return {
        "model": job["model"], "target": job["target"], "precision": job["precision"],
        "encoder": job["encoder"], "cell": f"{job['model']}-{job['target']}-{job['precision']}-"
        f"{job['encoder']}-{cell['key'][:12]}", "key": cell["key"], "status": rec.get("status", "failed"),
        "reused": reused, "cosine": parity.get("cosine"), "max_abs_diff": parity.get("max_abs_diff"),
        "runtime": parity.get("runtime"), "bytes": rec.get("bytes"), "sha256": rec.get("sha256"),
        "export_s": secs.get("export"), "verify_s": secs.get("verify"),
        "run_s": 0.0 if reused else cell.get("worker_seconds"), "attempts": cell.get("attempts"),
        "node": cell.get("node"), "error": rec.get("error"),
        "estimate": job.get("estimate"), "mparams": job.get("mparams"),
    }


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col == "bytes":
        return human_bytes(v)
    if col == "cosine":
        return f"{v:.7f}"
    if col == "max_abs_diff":
        return f"{v:.2e}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Export matrix", "",
        f"{summary['cells']} cells: {summary['verified']} verified, {summary['failed']} failed; "
        f"{summary['conversions']} converted this run, {summary['reused']} reused from the store; "
        f"wall {summary['wall_s']:.1f} s with {summary['runner']}.", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_fmt(c, r.get(c)) for c in COLUMNS) + " |" for r in rows]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {r['cell']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def heat_map(rows: list[dict[str, Any]], path: Path) -> bool:
    """Rows: model x encoder; columns: target x precision; colour = status, text = size. False without
    matplotlib (the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        log.warning("matplotlib not installed (pip install 'mobileclip-export[bench]'); no heat map")
        return False
    ys = sorted({(r["model"], r["encoder"]) for r in rows})
    xs = sorted({(r["target"], r["precision"]) for r in rows})
    grid = [[float("nan")] * len(xs) for _ in ys]
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 3, 0.45 * len(ys) + 1.5))
    for r in rows:
        y, x = ys.index((r["model"], r["encoder"])), xs.index((r["target"], r["precision"]))
        grid[y][x] = STATUS_CODE.get(r["status"], 2)
        ax.text(x, y, human_bytes(r["bytes"]) if r["bytes"] else r["status"], ha="center", va="center",
                fontsize=7)
    ax.imshow(grid, cmap=ListedColormap(["#8fd18f", "#f2d16b", "#e88080"]), vmin=0, vmax=2, aspect="auto")
    ax.set_xticks(range(len(xs)), [f"{t}\n{p}" for t, p in xs], fontsize=8)
    ax.set_yticks(range(len(ys)), [f"{m} {e}" for m, e in ys], fontsize=8)
    ax.set_title("export matrix: green verified, yellow unverified, red failed; text = artifact size")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def write_report(output: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Path]:
    paths = {"json": output / "matrix.json", "md": output / "matrix.md", "png": output / "matrix.png"}
    write_json_atomic(paths["json"], {"summary": summary, "rows": rows})
    tmp = output / f".matrix.md.{uuid.uuid4().hex[:6]}"
    tmp.write_text(markdown(summary, rows), "utf-8")
    os.replace(tmp, paths["md"])
    if not heat_map(rows, paths["png"]):
        del paths["png"]
    return paths

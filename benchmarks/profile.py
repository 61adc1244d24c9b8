"""``bench --profile``: per-operator profiles of every artifact, in its own runtime's profiler.

Each target's ``profile`` hook (ETDump + Inspector, onnxruntime's profiler, ...) returns an ``OpProfile``;
this stage runs them one artifact at a time after the timed runs (profilers perturb timings), then writes
``profiles.json`` next to the report and a Markdown table per artifact: the top operators by time, the share
spent outside the delegate and in layout conversions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROFILE_RUNS = 10  # profiled runs per artifact (after one warm-up); per-op times are summed over them


def profile_artifacts(
    bundle: Any, config: Any, data: Mapping[str, np.ndarray], runs: int = PROFILE_RUNS
) -> list[dict[str, Any]]:
    """One entry per selected artifact: its profile summary, or why there is none."""
    from mobileclip_export.benchmarks.artifacts import artifact_path
    from mobileclip_export.benchmarks.candidates import _cast, select
    from mobileclip_export.export.registry import get_target

    out = []
    for rec in select(bundle, config.targets, config.encoders, config.precision):
        if rec.get("status") == "failed" or not rec.get("path"):
            continue
        entry = {k: rec[k] for k in ("target", "encoder", "precision")}
        specs = rec.get("inputs") or [{"name": rec["encoder"]}]
        feeds = {specs[0]["name"]: _cast(data[rec["encoder"]][:1], specs[0].get("dtype"))}
        try:
            prof = get_target(rec["target"]).profile(artifact_path(bundle, rec), feeds, config.threads, runs)
        except Exception as err:  # noqa: BLE001 - one profiler failing must not lose the others
            log.warning("profile of %s %s failed: %s", rec["target"], rec["encoder"], err)
            entry["error"] = f"{type(err).__name__}: {err}"
        else:
            if prof is None:
                entry["error"] = "no per-operator profiler reachable for this runtime here"
            else:
                entry.update(prof.summary())
        out.append(entry)
    return out


def write(profiles: list[dict[str, Any]], output_dir: Path) -> Path:
    path = Path(output_dir) / "profiles.json"
    path.write_text(json.dumps(profiles, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def markdown(profiles: list[dict[str, Any]], top: int = 8) -> str:
    lines = ["## Per-operator profiles", ""]
    for p in profiles:
        head = f"### {p['target']} {p['encoder']} {p['precision']}"
        if "error" in p:
            lines += [head, "", f"not profiled: {p['error']}", ""]
            continue
        lines += [
            head,
            "",
            f"{p['runtime']}: {p['profiled_ms_per_run']:.2f} ms/run in profiled operators; outside the "
            f"delegate {_pct(p['share_outside_delegate'])}, layout conversions "
            f"{_pct(p['share_layout_conversions'])}",
            "",
            "| operator | ms/run | calls/run | share | outside delegate | layout |",
            "|---|---:|---:|---:|:-:|:-:|",
        ]
        for r in p["top"][:top]:
            lines.append(
                f"| {r['op']} | {r['ms_per_run']:.3f} | {r['calls_per_run']:.0f} | {100 * r['share']:.1f} % "
                f"| {'yes' if r['outside_delegate'] else ''} | {'yes' if r['layout'] else ''} |"
            )
        lines += [*(f"- {n}" for n in p.get("notes", [])), ""]
    return "\n".join(lines)

"""Parsers for the text the on-device tools print. Tested on samples in tests/data/bench_samples/.

LiteRT ``benchmark_model`` prints (optionally behind ``INFO: `` or a logcat ``I tflite  : `` prefix)::

    count=50 first=35977 curr=35421 min=35102 max=37950 avg=35688.4 std=511 [p5=... median=... p95=...]
    Inference timings in us: Init: 78123, First inference: 40512, Warmup (avg): 36234.1,
        Inference (avg): 35688.4   (one line)
    Memory footprint delta from the start of the tool (MB): init=61.7695 overall=68.4492
    (older releases: "Peak memory footprint (MB): init=... overall=...")
    Overall peak memory footprint (MB) via periodic monitoring: 75.8828

Numbers may be printed in C++ ``%g`` style (``2.95034e+06``). The last ``count=`` line is the timed phase, the
one before it the warm-up.

ExecuTorch ``executor_runner`` logs through ``ET_LOG``:
``I 00:00:00.123456 executorch:executor_runner.cpp:NNN]
<message>`` with messages ``Model loaded in %f ms.`` (recent releases), ``Iteration %u of %u: %f ms``
(recent releases, one per execution) and ``Model executed successfully %u time(s) in %f ms.`` (all releases).
"""

from __future__ import annotations

import re
from typing import Any

from mobileclip_export.benchmarks.stats import summarize

NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


class ParseError(ValueError):
    """The output lacks the lines a measurement needs (the tool probably failed; its text is attached)."""


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Return ms values: init_ms, first_ms, warmup_avg_ms, avg_ms, plus count/min/max/std (and p5/median/p95
    when printed) of the timed phase, and memory in MB where printed."""
    summary = re.search(
        rf"Inference timings in us: Init: {NUM}, First inference: {NUM}, Warmup \(avg\): {NUM}, "
        rf"Inference \(avg\): {NUM}",
        text,
    )
    if summary is None:
        raise ParseError(
            "benchmark_model output has no 'Inference timings in us' line; last lines:\n" + _tail(text)
        )
    init, first, warm, avg = (float(g) / 1e3 for g in summary.groups())
    out: dict[str, Any] = {"init_ms": init, "first_ms": first, "warmup_avg_ms": warm, "avg_ms": avg}
    counts = list(re.finditer(r"count=(\d+)((?: \w+=" + NUM + r")+)", text))
    if counts:
        last = counts[-1]
        fields = dict(re.findall(r"(\w+)=" + NUM, last.group(2)))
        out["count"] = int(last.group(1))
        for key in ("min", "max", "std", "p5", "median", "p95"):
            if key in fields:
                out[f"{key}_ms"] = float(fields[key]) / 1e3
    mem = re.search(
        rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
        rf"init={NUM} overall={NUM}",
        text,
    )
    if mem:
        out["memory_init_mb"], out["memory_overall_mb"] = float(mem.group(1)), float(mem.group(2))
    peak = re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {NUM}", text)
    if peak:
        out["memory_peak_mb"] = float(peak.group(1))
    size = re.search(rf"The input model file size \(MB\): {NUM}", text)
    if size:
        out["model_size_mb"] = float(size.group(1))
    delegated = re.search(r"Replacing (\d+) out of (\d+) node\(s\) with delegate", text)
    if delegated:
        out["delegated_nodes"] = [int(delegated.group(1)), int(delegated.group(2))]
    return out


def benchmark_model_latency(parsed: dict[str, Any]) -> dict[str, float]:
    """Latency block for a report row. benchmark_model prints no p90; p95 stands in only when printed, and the
    key says so."""
    lat: dict[str, float] = {
        "n": parsed.get("count", 0),
        "mean": parsed["avg_ms"],
        "trimmed_mean": parsed["avg_ms"],
        "median": parsed.get("median_ms", parsed["avg_ms"]),
    }
    for key in ("min", "max", "std"):
        if f"{key}_ms" in parsed:
            lat[key] = parsed[f"{key}_ms"]
    if "p95_ms" in parsed:
        lat["p95"] = parsed["p95_ms"]
    return lat


def parse_executor_runner(text: str, warmup: int = 0) -> dict[str, Any]:
    """Return load_ms (when printed), per-iteration samples (when printed), total and average ms."""
    total = re.search(rf"Model executed successfully (\d+) time\(s\) in {NUM} ms", text)
    if total is None:
        raise ParseError(
            "executor_runner output has no 'Model executed successfully' line; last lines:\n" + _tail(text)
        )
    n, total_ms = int(total.group(1)), float(total.group(2))
    out: dict[str, Any] = {"executions": n, "total_ms": total_ms, "avg_ms": total_ms / max(n, 1)}
    load = re.search(rf"Model loaded in {NUM} ms", text)
    if load:
        out["load_ms"] = float(load.group(1))
    iters = [(int(i), float(v)) for i, v in re.findall(rf"Iteration (\d+) of \d+: {NUM} ms", text)]
    if iters:
        samples = [v for _, v in sorted(iters)]
        out["first_ms"] = samples[0]
        timed = samples[warmup:] if len(samples) > warmup else samples
        out["samples_ms"] = timed
        out["stats"] = summarize(timed).to_dict()
    threads = re.search(r"Resetting threadpool with num threads = (\d+)", text)
    if threads:
        out["threads"] = int(threads.group(1))
    return out

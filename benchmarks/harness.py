"""Timed measurement of several candidates in one process, interleaved so their ratios share conditions.

Per candidate, in order: load (cold load time, RSS sampled during load + first run), first inference, then
``warmup`` untimed runs, then ``runs`` timed runs. Warm-up and timed runs are round-robin across candidates
(one run of each per round, starting position rotated every round), so slow drift of the machine - thermal,
other tenants on a shared CPU - hits every candidate alike and the speed ratios come from the same run.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobileclip_export.benchmarks.stats import LatencyStats, summarize
from mobileclip_export.export.pipeline.progress import ProgressCallback, ProgressEvent
from mobileclip_export.export.spec import RuntimeUnavailable

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Any]

# Candidate kinds. "deployment": the artifact in its own runtime; "reference": an emulating/reference runtime
# (size + load listed, latency labelled, kept out of ratios); "baseline": PyTorch eager; "peak": a plain GEMM
# timed alongside to measure this machine's ceiling (see peak.py), never a report row.
DEPLOYMENT, REFERENCE, BASELINE, PEAK = "deployment", "reference", "baseline", "peak"


@dataclass
class Candidate:
    """One thing to time. ``load`` returns ``(run_fn, runtime_label, is_deployment_runtime)``."""

    target: str
    encoder: str
    precision: str
    load: Callable[[], tuple[RunFn, str, bool]]
    feeds: Mapping[str, np.ndarray]
    kind: str = DEPLOYMENT
    size_bytes: int | None = None
    artifact: str | None = None
    close: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)
    guard: dict[str, Any] | None = None  # accuracy-guard figures of a compressed artifact (its manifest)
    variant: str | None = None  # several rows of one artifact (a target's bench_candidates) told apart
    fields: dict[str, Any] | None = None  # what the target adds to the row's ``extra``

    @property
    def key(self) -> str:
        key = f"{self.target}/{self.encoder}/{self.precision}"
        return f"{key}/{self.variant}" if self.variant else key


@dataclass
class Measurement:
    candidate: Candidate
    status: str = "ok"  # "ok" | "skipped: <why>" | "failed: <why>"
    runtime: str = ""
    load_ms: float | None = None
    first_ms: float | None = None
    rss_delta_mb: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    stats: LatencyStats | None = None
    output: np.ndarray | None = None
    run: RunFn | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to ru_maxrss, which is a high-water mark)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


class RssPeakSampler:
    """Samples RSS in a thread every ``interval`` s; ``peak_delta`` = max sample minus the value at start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start_rss = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssPeakSampler:
        gc.collect()
        self.start_rss = self.peak = current_rss_bytes()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())

    @property
    def peak_delta_bytes(self) -> int:
        return self.peak - self.start_rss


def _as_array(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def load_candidate(cand: Candidate) -> Measurement:
    m = Measurement(candidate=cand)
    try:
        with RssPeakSampler() as rss:
            t0 = time.perf_counter()
            run, label, deployment = cand.load()
            t1 = time.perf_counter()
            out = run(cand.feeds)
            t2 = time.perf_counter()
    except RuntimeUnavailable as err:
        m.status = f"skipped: {err}"
        log.info("%s: %s", cand.key, m.status)
        return m
    except Exception as err:  # a broken artifact must not stop the other candidates
        m.status = f"failed: {type(err).__name__}: {err}"
        log.warning("%s: %s", cand.key, m.status)
        return m
    if cand.kind == DEPLOYMENT and not deployment:
        cand.kind = REFERENCE
    m.runtime, m.run = label, run
    m.load_ms, m.first_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    m.rss_delta_mb = rss.peak_delta_bytes / 2**20
    m.output = _as_array(out)
    return m


def _load_with_progress(cand: Candidate, say: ProgressCallback) -> Measurement:
    say(ProgressEvent("stage-start", "load", target=cand.target, encoder=cand.encoder))
    t0 = time.perf_counter()
    m = load_candidate(cand)
    say(
        ProgressEvent(
            "stage-end", "load", cand.target, cand.encoder, time.perf_counter() - t0, status=m.status
        )
    )
    return m


def measure(
    candidates: list[Candidate],
    runs: int,
    warmup: int,
    reference_runs: int = 3,
    progress: ProgressCallback | None = None,
) -> list[Measurement]:
    """Load every candidate, then warm up and time them round-robin. Order of results = order of input.

    Reference runtimes (emulators, often 100x slower) get no warm-up and only ``min(runs, reference_runs)``
    timed runs, spread over the first rounds: their latency is listed but never compared, and timing them as
    often as the deployment runtimes would dominate the wall time.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    say = progress or (lambda ev: None)
    results = [_load_with_progress(c, say) for c in candidates]
    live = [m for m in results if m.ok]
    ref_rounds = min(runs, max(reference_runs, 1))
    say(ProgressEvent("stage-start", "timing", message=f"{len(live)} candidates x {warmup}+{runs} rounds"))
    t0 = time.perf_counter()
    for round_index in range(warmup + runs):
        shift = round_index % max(len(live), 1)
        timed = round_index >= warmup
        for m in live[shift:] + live[:shift]:
            if not m.ok:
                continue
            if m.candidate.kind == REFERENCE and (not timed or round_index - warmup >= ref_rounds):
                continue
            try:
                t0 = time.perf_counter()
                m.run(m.candidate.feeds)  # type: ignore[misc]
                dt = (time.perf_counter() - t0) * 1e3
            except Exception as err:
                m.status = f"failed: {type(err).__name__}: {err}"
                log.warning("%s: %s", m.candidate.key, m.status)
                continue
            if timed:
                m.samples_ms.append(dt)
    say(ProgressEvent("stage-end", "timing", seconds=time.perf_counter() - t0))
    for m in results:
        if m.ok and m.samples_ms:
            m.stats = summarize(m.samples_ms)
    return results


def release(results: list[Measurement]) -> None:
    for m in results:
        m.run = None
        if m.candidate.close is not None:
            try:
                m.candidate.close()
            except Exception:  # closing is best effort
                log.debug("close failed for %s", m.candidate.key, exc_info=True)

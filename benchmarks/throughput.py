"""``bench --batch-sizes 1,8,32``: per-input latency, inputs per second and peak memory at each batch size.

Per artifact (and the reparameterized PyTorch model as the baseline), one row per batch size B: B inputs are
handed to the artifact's runner the way ``predict`` / ``index`` do (``export.batching.run_rows``): in one
call when the artifact takes batches (its runner cuts them into the sizes it declares, padding the last),
row by row when it is a batch-1 artifact. A row's ``median_ms`` is one batch of B; ``ms_per_item`` and
``items_per_s`` divide by B (items: images for the image encoder, captions for the text encoder).

Peak memory per row: the kernel's resident-set high-water mark (``VmHWM``) is reset at the start of every
row, after the artifact is loaded (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so ``peak_rss_mb`` is
the process's peak while that row ran, not the whole run's (nor the load's transient); ``peak_over_load_mb``
subtracts the RSS before the artifact was loaded: the loaded artifact plus what batches of B need.
Artifacts run one after another (not interleaved, unlike the latency table) so memory belongs to one
runtime at a time; sizes run in increasing order, each runtime is closed before the next loads. Where
``clear_refs`` cannot be written, RSS sampled every 2 ms stands in (``peak_rss_method`` says which).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobileclip_export.benchmarks.harness import RssPeakSampler, current_rss_bytes
from mobileclip_export.benchmarks.stats import summarize
from mobileclip_export.errors import UsageError
from mobileclip_export.export.batching import MAX_BATCH, declared_batch, run_rows, takes_batches

log = logging.getLogger(__name__)

CLEAR_REFS, STATUS = "/proc/self/clear_refs", "/proc/self/status"


def parse_batch_sizes(value: str | None) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); empty -> ()."""
    if not value:
        return ()
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"--batch-sizes wants comma-separated positive integers, got {value!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_BATCH:
        raise UsageError(f"--batch-sizes wants integers in 1..{MAX_BATCH}, got {value!r}")
    return tuple(sizes)


@dataclass
class ThroughputRow:
    target: str
    encoder: str
    precision: str
    batch_size: int
    artifact_batch: str  # what the artifact declares: "dynamic", "1", "8", "1,8,32"
    kind: str = "deployment"  # "deployment" | "baseline"
    status: str = "ok"
    runtime: str = ""
    calls_per_batch: int | None = None  # runtime calls per batch of B (row by row: B)
    latency: dict[str, float] | None = None  # one batch of B, ms
    ms_per_item: float | None = None
    items_per_s: float | None = None
    peak_rss_mb: float | None = None
    peak_over_load_mb: float | None = None
    peak_rss_method: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Subject:
    """One thing to time: ``load`` returns (run(x) -> embeddings, runtime label, deployment?, close)."""

    target: str
    encoder: str
    precision: str
    artifact_batch: str
    calls: Callable[[int], int]
    load: Callable[[], tuple[Callable[[np.ndarray], Any], str, bool, Callable[[], None]]]
    kind: str = "deployment"


class PeakMemory:
    """The kernel's high-water mark since the last ``reset`` (``VmHWM`` after ``clear_refs``), or sampled."""

    def __init__(self) -> None:
        self.kernel = self._reset_kernel()
        self.method = "VmHWM reset per row (clear_refs 5)" if self.kernel else "RSS sampled every 2 ms"
        self._sampler: RssPeakSampler | None = None

    @staticmethod
    def _reset_kernel() -> bool:
        try:
            with open(CLEAR_REFS, "w", encoding="ascii") as fh:
                fh.write("5")
            return _hwm_bytes() is not None
        except OSError:
            return False

    def reset(self) -> None:
        gc.collect()
        if self.kernel:
            self._reset_kernel()
        else:
            self._sampler = RssPeakSampler().__enter__()

    def peak_bytes(self) -> int:
        if self.kernel:
            return _hwm_bytes() or current_rss_bytes()
        assert self._sampler is not None
        self._sampler.__exit__(None, None, None)
        return self._sampler.peak


def _hwm_bytes() -> int | None:
    try:
        with open(STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def declared_label(rec: Mapping[str, Any]) -> str:
    d = declared_batch(rec)
    return "dynamic" if d["dynamic"] else ",".join(map(str, d["sizes"] or [1]))


def calls_for(rec: Mapping[str, Any]) -> Callable[[int], int]:
    """Runtime calls a batch of B costs this artifact (its runner's chunking, export.batching.chunk_plan)."""
    from mobileclip_export.export.batching import chunk_plan

    d = declared_batch(rec)
    if d["dynamic"]:
        return lambda b: 1
    if not takes_batches(rec):
        return lambda b: b
    return lambda b: len(chunk_plan(b, d["sizes"]))


def artifact_subject(rec: Mapping[str, Any], path: Any, threads: int, thread_names: Sequence[str]) -> Subject:
    """An artifact fed the way predict/index feed it (one call when it takes batches, else row by row)."""
    from mobileclip_export.export.registry import get_target

    target = get_target(rec["target"])
    options = dict(rec.get("options") or {})
    options.update({o.name: threads for o in target.options if o.name in thread_names})
    name = (rec.get("inputs") or [{"name": rec["encoder"]}])[0]["name"]
    batched = takes_batches(rec)
    dtype = (rec.get("inputs") or [{}])[0].get("dtype")

    def load() -> tuple[Callable[[np.ndarray], Any], str, bool, Callable[[], None]]:
        runner = target.load(path, options)

        def run(x: np.ndarray) -> Any:
            return run_rows(runner, name, x.astype(dtype) if dtype in ("float16", "int64") else x, batched)

        return run, runner.label or target.name, bool(runner.is_deployment_runtime), runner.close

    label = declared_label(rec)
    return Subject(target.name, rec["encoder"], rec["precision"], label, calls_for(rec), load)


def torch_subject(target: str, encoder: str, module: Any) -> Subject:
    """The reparameterized PyTorch model, eager, one forward per batch."""
    import torch

    def load() -> tuple[Callable[[np.ndarray], Any], str, bool, Callable[[], None]]:
        def run(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        return run, f"torch {torch.__version__} eager", True, lambda: None

    return Subject(target, encoder, "fp32", "dynamic", lambda b: 1, load, kind="baseline")


def runs_at(batch: int, runs: int) -> int:
    """Timed batches at size B: about ``runs`` inputs in all (at least 3 batches), so every size costs the
    same wall time and per-input figures rest on similar input counts."""
    return max(3, math.ceil(runs / batch))


def measure_subject(
    subject: Subject, inputs: np.ndarray, sizes: Sequence[int], runs: int, warmup: int, memory: PeakMemory
) -> list[ThroughputRow]:
    """Load, then per batch size (increasing): warm up, time, read the row's peak memory; close."""

    def row(b: int, **kw: Any) -> ThroughputRow:
        return ThroughputRow(subject.target, subject.encoder, subject.precision, b, subject.artifact_batch,
                             subject.kind, **kw)  # fmt: skip

    gc.collect()
    before = current_rss_bytes()
    try:
        run, label, deployment, close = subject.load()
    except Exception as err:  # a runtime that cannot load here is a row saying why, not a crash
        return [row(b, status=f"skipped: {type(err).__name__}: {err}") for b in sizes]
    if not deployment:
        close()
        return [row(b, status="skipped: reference runtime (not timed at batch sizes)", runtime=label)
                for b in sizes]  # fmt: skip
    out = []
    try:
        for b in sizes:
            x = np.ascontiguousarray(inputs[np.arange(b) % len(inputs)])
            memory.reset()  # after the load: a row's peak is what running batches of B holds
            samples = _time(run, x, runs_at(b, runs), warmup)
            peak = memory.peak_bytes()
            stats = summarize(samples)
            out.append(row(b, runtime=label, calls_per_batch=subject.calls(b), latency=stats.to_dict(),
                           ms_per_item=stats.median / b, items_per_s=1e3 * b / stats.median,
                           peak_rss_mb=peak / 2**20, peak_over_load_mb=(peak - before) / 2**20,
                           peak_rss_method=memory.method))  # fmt: skip
    except Exception as err:
        log.warning("%s/%s: %s", subject.target, subject.encoder, err)
        out += [row(b, status=f"failed: {type(err).__name__}: {err}") for b in sizes[len(out) :]]
    finally:
        close()
    return out


def _time(run: Callable[[np.ndarray], Any], x: np.ndarray, runs: int, warmup: int) -> list[float]:
    for _ in range(max(warmup, 1)):
        run(x)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def measure(
    subjects: Sequence[Subject],
    inputs: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    runs: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Every subject at every size, one subject at a time (see the module docstring)."""
    memory = PeakMemory()
    rows: list[dict[str, Any]] = []
    for s in subjects:
        rows += [r.to_dict() for r in measure_subject(s, inputs[s.encoder], sizes, runs, warmup, memory)]
    return rows


def settings(sizes: Sequence[int], runs: int) -> dict[str, Any]:
    return {
        "batch_sizes": list(sizes),
        "timed_batches": {str(b): runs_at(b, runs) for b in sizes},
        "interleaved": False,
        "peak_memory": "per row: VmHWM reset at the row's start (or RSS sampled); over_load: minus the RSS "
        "before the artifact was loaded",
    }

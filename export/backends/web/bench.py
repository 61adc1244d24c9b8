"""``bench`` for a web folder: every shipped model file in headless Chromium (transformers.js on
onnxruntime-web, WASM) and in onnxruntime Python, 1 and N threads, in one run.

onnxruntime Python is timed by the benchmark harness (``candidates``, interleaved with every other row);
Chromium runs its own loop after that (``external``): the page is served with COOP/COEP headers, so WASM
threads above 1 are real (``cross_origin_isolated`` is recorded). Chromium inherits the run's pinned cores.
Rows also carry the transformers.js performance leaderboard's field names (``fields``): ``load_ms``,
``first_infer_ms``, ``subsequent_infer_ms`` (``p50``, ``p90``), ``dtype``, ``device``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.export.spec import BenchCandidate, ExternalTiming, Runner

from .folder import DTYPES, INPUT, onnx_path

ORT = "ort-python"
WASM = "chromium-wasm"


def thread_counts(threads: int) -> list[int]:
    """1 and N: what a page gets without COOP/COEP, and with them on this run's cores."""
    return sorted({1, int(threads)})


def shipped(folder: Path) -> list[tuple[str, str]]:
    """(encoder, dtype) of every model file in the folder, in dtype order."""
    return [(e, d) for d in DTYPES for e in INPUT if onnx_path(folder, e, d).is_file()]


def variant(runtime: str, threads: int) -> str:
    return f"{runtime}-{threads}t"


class _OrtRunner(Runner):
    """One model file of the folder in onnxruntime Python (CPU), a fixed thread count."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.label = f"onnxruntime {ort.__version__} (Python, CPU, {threads} thread(s))"

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, dict(inputs))[0], np.float32)


def candidates(folder: Path, threads: int) -> list[BenchCandidate]:
    out = []
    for n in thread_counts(threads):
        for encoder, dtype in shipped(folder):
            path = onnx_path(folder, encoder, dtype)
            out.append(
                BenchCandidate(
                    encoder=encoder,
                    precision=DTYPES[dtype].precision,
                    variant=variant(ORT, n),
                    load=lambda p=path, k=n: _OrtRunner(p, k),
                    input_name=INPUT[encoder],
                    input_dtype="float32" if encoder == "image" else "int64",
                    size_bytes=path.stat().st_size,
                    artifact=str(path),
                    fields={"dtype": dtype, "device": "cpu", "threads": n},
                )
            )
    return out


def _timing(run: dict[str, Any], folder: Path, threads: int, facts: dict[str, Any]) -> ExternalTiming:
    from .runtime import from_b64

    encoder, dtype = run["encoder"], run["dtype"]
    path = onnx_path(folder, encoder, dtype)
    t = ExternalTiming(
        encoder=encoder,
        precision=DTYPES[dtype].precision,
        variant=variant(WASM, threads),
        runtime=f"transformers.js {facts.get('transformers')} on onnxruntime-web WASM, {threads} thread(s), "
        f"{facts.get('browser') or 'Chromium'}",
        size_bytes=path.stat().st_size,
        artifact=str(path),
        fields={"dtype": dtype, "device": "wasm", "threads": threads, **facts},
    )
    if not run.get("ok"):
        t.status = f"failed: {run.get('error') or 'the browser run failed'}"
        return t
    t.load_ms, t.first_ms = float(run["load_ms"]), float(run["first_infer_ms"])
    t.samples_ms = [float(v) for v in run["warm_ms"]]
    t.output = from_b64(run["data"], run["dims"])
    return t


def external(
    folder: Path,
    inputs: Mapping[str, np.ndarray],
    runs: int,
    threads: int,
    precisions: tuple[str, ...] | None = None,
) -> list[ExternalTiming]:
    """Chromium timings of every shipped file: load, first inference, ``runs`` warm runs, per thread count."""
    from .browser import chromium_version, run_in_chromium
    from .checks import browser_job

    feeds = {k: (np.asarray(v), None) for k, v in inputs.items() if k in INPUT}
    jobs = [
        {"encoder": e, "dtype": d}
        for e, d in shipped(folder)
        if e in feeds and (precisions is None or DTYPES[d].precision in precisions)
    ]
    if not jobs:
        return []
    browser = chromium_version()
    out = []
    for n in thread_counts(threads):
        result = run_in_chromium(folder, browser_job(feeds, jobs, threads=n, warm_runs=runs))
        facts = {"browser": browser, "cross_origin_isolated": result.get("cross_origin_isolated")}
        facts["transformers"] = result.get("transformers")
        out += [_timing(r, folder, n, facts) for r in result.get("runs", [])]
    return out


def fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The transformers.js performance leaderboard's names for a row's figures (ms)."""
    lat = row.get("latency") or {}
    extra = dict(row.get("extra") or {})
    extra.update(load_ms=row.get("load_ms"), first_infer_ms=row.get("first_ms"))
    extra["subsequent_infer_ms"] = {"p50": lat.get("median"), "p90": lat.get("p90")}
    return extra

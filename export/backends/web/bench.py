"""Browser timings of a web folder beside onnxruntime Python on the same files, in one run.

Rows carry the transformers.js performance leaderboard's field names (``load_ms``, ``first_infer_ms``,
``subsequent_infer_ms`` with ``p50``/``p90``), per model file, dtype, runtime and thread count. Chromium
runs onnxruntime-web (WASM) through transformers.js with COOP/COEP headers, so threads above 1 are real
(``cross_origin_isolated`` is recorded). Not yet wired into ``bench``: run
``python -m mobileclip_export.export.backends.web.bench <folder> [runs]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .folder import DTYPES, onnx_path


def _inputs(folder: Path) -> dict[str, np.ndarray]:
    from mobileclip_export.models.tokenizer import tokenize

    config = json.loads((folder / "config.json").read_text())
    size = int(config.get("vision_config", {}).get("image_size", 256))
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return {"image": image, "text": tokenize(["a photo of a cat"], 77).astype(np.int64)}


def _stats(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p90": round(float(np.percentile(ms, 90)), 2)}


def _shipped(folder: Path) -> list[tuple[str, str]]:
    return [(e, d) for d in DTYPES for e in ("image", "text") if onnx_path(folder, e, d).is_file()]


def browser_rows(folder: Path, runs: int, threads: int) -> list[dict[str, Any]]:
    from .browser import chromium_version, run_in_chromium
    from .checks import browser_job

    feeds = {k: (v, None) for k, v in _inputs(folder).items()}
    jobs = [{"encoder": e, "dtype": d} for e, d in _shipped(folder)]
    result = run_in_chromium(folder, browser_job(feeds, jobs, threads=threads, warm_runs=runs))
    rows = []
    for r in result["runs"]:
        row = {"runtime": f"transformers.js {result.get('transformers')} (onnxruntime-web WASM)",
               "browser": chromium_version(), "device": "wasm", "threads": threads,
               "cross_origin_isolated": result.get("cross_origin_isolated"),
               "encoder": r["encoder"], "dtype": r["dtype"]}  # fmt: skip
        if r.get("ok"):
            row.update(load_ms=round(r["load_ms"], 1), first_infer_ms=round(r["first_infer_ms"], 2))
            row["subsequent_infer_ms"] = _stats(r["warm_ms"])
        else:
            row["error"] = r.get("error")
        rows.append(row)
    return rows


def ort_rows(folder: Path, runs: int, threads: int) -> list[dict[str, Any]]:
    import onnxruntime as ort

    feeds = _inputs(folder)
    rows = []
    for encoder, dtype in _shipped(folder):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        t0 = time.perf_counter()
        sess = ort.InferenceSession(
            str(onnx_path(folder, encoder, dtype)), opts, providers=["CPUExecutionProvider"]
        )
        t1 = time.perf_counter()
        feed = {sess.get_inputs()[0].name: feeds[encoder]}
        sess.run(None, feed)
        t2 = time.perf_counter()
        warm = []
        for _ in range(runs):
            s = time.perf_counter()
            sess.run(None, feed)
            warm.append((time.perf_counter() - s) * 1e3)
        rows.append({"runtime": f"onnxruntime {ort.__version__} (Python, CPU)", "device": "cpu",
                     "threads": threads, "encoder": encoder, "dtype": dtype,
                     "load_ms": round((t1 - t0) * 1e3, 1), "first_infer_ms": round((t2 - t1) * 1e3, 2),
                     "subsequent_infer_ms": _stats(warm)})  # fmt: skip
    return rows


def bench_folder(
    folder: Path, runs: int = 20, threads: tuple[int, ...] | None = None
) -> list[dict[str, Any]]:
    """Every shipped file, Chromium (WASM) and onnxruntime Python, 1 and all threads, in one run."""
    counts = threads or tuple(sorted({1, os.cpu_count() or 1}))
    rows: list[dict[str, Any]] = []
    for n in counts:
        rows += browser_rows(Path(folder), runs, n) + ort_rows(Path(folder), runs, n)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model | dtype | runtime | threads | load ms | first ms | p50 ms | p90 ms |",
           "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(
        rows, key=lambda r: (r["encoder"], list(DTYPES).index(r["dtype"]), r["threads"], r["device"])
    ):
        s = r.get("subsequent_infer_ms") or {}
        cells = [r["encoder"], r["dtype"], r["device"], r["threads"], r.get("load_ms", "-")]
        cells += [r.get("first_infer_ms", r.get("error", "-")), s.get("p50", "-"), s.get("p90", "-")]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(out)


if __name__ == "__main__":  # python -m mobileclip_export.export.backends.web.bench <folder> [runs]
    got = bench_folder(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    print(markdown(got))
    print(json.dumps(got, indent=1))

"""Library search benchmark: exact top-k over N stored fp16 vectors on one core (not a timed test).

    python -m mobileclip_export.benchmarks.search --rows 300000 --dim 512 --top-k 10 [--json out.json]

Writes a real library (``library/store.py``, random unit vectors; paths are placeholders) into a temporary
folder, opens it as ``search`` does, and times ``top_k_fp16`` for one query and for a batch of queries, pinned
to one core with one thread. Checks the top-k against a float64 full sort of the same fp16 rows, and times the
numpy-only cast path too (what a reader without torch gets).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads its BLAS: one core means one thread

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

SHARD = 16384


def write_library(root: Path, rows: int, dim: int, seed: int) -> None:
    from mobileclip_export.library.store import DTYPE, FORMAT, VERSION, Library

    manifest = {"format": FORMAT, "version": VERSION, "dim": dim, "dtype": DTYPE, "normalized": True,
                "shard_rows": SHARD, "images_root": "/bench", "model": {"fingerprint": "bench"},
                "bundle": {}}  # fmt: skip
    rng = np.random.default_rng(seed)
    with Library.create_or_open(root, manifest) as lib:
        for start in range(0, rows, SHARD):
            n = min(SHARD, rows - start)
            x = rng.standard_normal((n, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            meta = [[f"photo{start + i:07d}.jpg", 0, 0, "0" * 64] for i in range(n)]
            lib.commit_shard(x.astype(np.float16), meta)


def _times(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm: pages mapped, buffers allocated
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": statistics.median(ts), "min_ms": ts[0], "p90_ms": ts[int(0.9 * (len(ts) - 1))]}


def run(rows: int, dim: int, k: int, runs: int, seed: int = 0) -> dict[str, Any]:
    import torch

    from mobileclip_export.library import search as S
    from mobileclip_export.library.store import Library

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory(prefix="mobileclip-search-bench-") as tmp:
        write_library(Path(tmp), rows, dim, seed)
        t0 = time.perf_counter()
        lib = Library(tmp)
        shards = list(S.library_shards(lib))
        open_ms = (time.perf_counter() - t0) * 1e3
        q = np.random.default_rng(seed + 1).standard_normal((8, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        one = _times(lambda: S.top_k_fp16(shards, q[:1], k), runs)
        eight = _times(lambda: S.top_k_fp16(shards, q, k), max(3, runs // 4))
        exact = _check_exact(shards, q, k)
        caster = S._caster
        S._caster = lambda: lambda src, out: np.copyto(out, src)  # noqa: E731 - the numpy-only cast
        try:
            numpy_only = _times(lambda: S.top_k_fp16(shards, q[:1], k), 3)
        finally:
            S._caster = caster
    return {"rows": rows, "dim": dim, "top_k": k, "threads": 1, "open_ms": open_ms, "one_query": one,
            "eight_queries": eight, "numpy_only_cast_one_query": numpy_only, "exact": exact,
            "torch": torch.__version__, "numpy": np.__version__}  # fmt: skip


def _check_exact(shards: list[Any], q: np.ndarray, k: int) -> bool:
    from mobileclip_export.library.search import top_k_fp16

    _, ids = top_k_fp16(shards, q, k)
    full = np.concatenate([m for m, _, _ in shards]).astype(np.float64) @ q.T.astype(np.float64)
    ref = np.argsort(-full, axis=0, kind="stable")[:k].T
    return bool((ids == ref).all())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mobileclip_export.benchmarks.search", description=__doc__)
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    res = run(args.rows, args.dim, args.top_k, args.runs)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    o, e, n = res["one_query"], res["eight_queries"], res["numpy_only_cast_one_query"]
    print(f"top-{res['top_k']} over {res['rows']:,} fp16 x {res['dim']} on 1 core: "
          f"{o['median_ms']:.1f} ms median (min {o['min_ms']:.1f}, p90 {o['p90_ms']:.1f}); "
          f"8 queries {e['median_ms']:.1f} ms; numpy-only cast {n['median_ms']:.0f} ms; "
          f"open {res['open_ms']:.0f} ms; exact vs float64 sort: {res['exact']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

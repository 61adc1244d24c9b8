"""``search``: exact top-k cosine over a library's fp16 vectors, the query encoded with the same model.

Brute force is exact and, measured here (benchmarks/search.py), fast enough: the fp16 rows are cast to float32
one chunk at a time (a cache-sized buffer, so memory stays flat at any library size) and multiplied by all
queries at once; each chunk keeps only its top-k candidates (argpartition), merged at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import UsageError
from mobileclip_export.library import identity as I
from mobileclip_export.library.store import Library

log = logging.getLogger(__name__)

SEARCH_SCHEMA = "mobileclip-export.search/1"
CAST_ROWS = 1024  # 1024 x 512 float32 = 2 MB: cast and product while the rows are still in cache
BLOCK_ROWS = 16384  # rows scored before one argpartition (measured: 8192-row casts 54 ms, 1024 36 ms at 300k)


def _caster() -> Any:
    """fp16 -> fp32 cast into ``out``: numpy's cast is scalar (~2 ns/value here); torch's is vectorized."""
    try:
        import torch
    except ImportError:  # numpy alone still works, ~10x slower on large libraries
        return lambda src, out: np.copyto(out, src)

    def cast(src: np.ndarray, out: np.ndarray) -> None:
        if src.flags.writeable:
            torch.from_numpy(out).copy_(torch.from_numpy(src))
        else:
            np.copyto(out, src)

    return cast


def top_k_fp16(
    shards: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` (float32 [Q, D], normalized) over (fp16 [n, D], ids [n], live mask [n])
    shards: (scores [Q, k'], ids [Q, k']), best first, equal scores by smaller id; k' = min(k, live rows)."""
    q = np.ascontiguousarray(queries, np.float32)
    cast, buf = _caster(), np.empty((CAST_ROWS, q.shape[1]), np.float32)
    block = np.empty((BLOCK_ROWS, len(q)), np.float32)
    cand_s, cand_i = [], []
    for matrix, ids, live in shards:
        for s in range(0, len(matrix), BLOCK_ROWS):
            rows = matrix[s : s + BLOCK_ROWS]
            scores = block[: len(rows)]  # [n, Q]
            for c in range(0, len(rows), CAST_ROWS):
                b = buf[: len(rows[c : c + CAST_ROWS])]
                cast(rows[c : c + CAST_ROWS], b)
                np.matmul(b, q.T, out=scores[c : c + len(b)])
            scores[~live[s : s + len(rows)]] = -np.inf
            keep = min(k, len(rows))
            part = np.argpartition(-scores, keep - 1, axis=0)[:keep] if keep < len(rows) else None
            top = part if part is not None else np.broadcast_to(np.arange(len(rows))[:, None], scores.shape)
            cand_s.append(np.take_along_axis(scores, top, axis=0).T)
            cand_i.append(ids[s : s + len(rows)][top].T)
    if not cand_s:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    all_s, all_i = np.concatenate(cand_s, axis=1), np.concatenate(cand_i, axis=1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    n_live = int(np.isfinite(best_s[0]).sum()) if len(best_s) else 0
    return best_s[:, :n_live], best_i[:, :n_live]


def library_shards(lib: Library) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for rec, matrix, live in lib.iter_shards():
        ids = np.arange(rec["first_id"], rec["first_id"] + len(matrix), dtype=np.int64)
        yield matrix, ids, live


def _queries(bundle: Any, enc: Any, texts: Sequence[str], images: Sequence[str | Path]) -> np.ndarray:
    from mobileclip_export.library.stream import normalized_fp16
    from mobileclip_export.models import get_model_spec
    from mobileclip_export.models.preprocess import preprocess_batch
    from mobileclip_export.models.tokenizer import tokenize

    parts = []
    if texts:
        ctx = int(bundle.manifest.get("context_length", 77))
        parts.append(enc.text(tokenize(list(texts), ctx).astype(np.int32)))
    if images:
        parts.append(enc.image(preprocess_batch(list(images), get_model_spec(bundle.model).preprocessing)))
    q = np.concatenate([np.asarray(p, np.float32) for p in parts])
    return normalized_fp16(q).astype(np.float32)  # the query rounded like the rows: symmetric, reproducible


def search_library(
    index: str | Path,
    bundle: str | Path | Any,
    target: str | None = None,
    *,
    texts: Sequence[str] = (),
    images: Sequence[str | Path] = (),
    top_k: int = 10,
    precision: str | None = None,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Rank the library's images for each text and image query; refuses a bundle of another model."""
    from mobileclip_export.export.zeroshot.encoders import open_encoders, read_bundle_dir

    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1 (got {top_k})")
    if not texts and not images:
        raise UsageError("pass --text QUERY and/or --image FILE")
    lib, b = Library(index), read_bundle_dir(bundle)
    I.require_same_model(lib.manifest["model"], I.model_identity(b.manifest), f"library {str(index)!r}")
    target = target or lib.manifest["bundle"]["target"]
    need = tuple(n for n, q in (("text", texts), ("image", images)) if q)
    t0 = time.perf_counter()
    enc = open_encoders(b, target, precision, checkpoint, need=need)
    try:
        q = _queries(b, enc, texts, images)
    finally:
        enc.close()
    t1 = time.perf_counter()
    scores, ids = top_k_fp16(library_shards(lib), q, top_k)
    t2 = time.perf_counter()
    names = [f"text: {t}" for t in texts] + [f"image: {p}" for p in images]
    return _result(lib, index, target, enc.label, names, scores, ids, (t1 - t0, t2 - t1))


def _result(
    lib: Library, index: Any, target: str, runtime: str, names: list[str], scores: Any, ids: Any, secs: Any
) -> dict[str, Any]:
    root = Path(lib.manifest["images_root"])
    meta = lib.rows(int(i) for row in ids for i in row)
    queries = []
    for name, row_s, row_i in zip(names, scores, ids):
        hits = []
        for s, i in zip(row_s, row_i):
            row = meta[int(i)]
            hits.append(
                {"id": int(i), "path": row["path"], "file": str(root / row["path"]), "cosine": float(s)}
            )
        queries.append({"query": name, "hits": hits})
    return {
        "schema": SEARCH_SCHEMA,
        "index": str(index),
        "model": lib.manifest["model"]["model"],
        "target": target,
        "runtime": runtime,
        "rows": lib.live_count,
        "seconds": {"encode": round(secs[0], 4), "search": round(secs[1], 4)},
        "queries": queries,
    }


def format_search(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['model']} | {doc['target']} | {doc['rows']} images | search {doc['seconds']['search']:.3f} s"
    ]
    for q in doc["queries"]:
        lines.append(q["query"])
        for rank, h in enumerate(q["hits"], 1):
            lines.append(f"  {rank:>3}. {h['cosine']:+.4f}  {h['path']}")
    return "\n".join(lines)

"""Batch sizes: the ``batch_size`` option (a fixed batch N), what an artifact declares, and running a fixed-
batch artifact chunk by chunk.

Every artifact record carries ``batch`` in the manifest: ``{"sizes": [N, ...] | None, "dynamic": bool,
"verified": [...]}``: the batch sizes its input takes (fixed or enumerated), whether any size is taken
(``sizes`` None then), and the sizes verification ran parity at. Bundles written before the field existed
get the same answer from their input shapes (``declared_batch``). Nothing here names a target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mobileclip_export.export.spec import EncoderExport, OptionSpec, TensorSpec

if TYPE_CHECKING:
    import numpy as np

    from mobileclip_export.export.spec import Runner

MAX_BATCH = 256
BATCH_SIZE_OPTION = OptionSpec(
    "batch_size",
    "fixed batch N of the artifact's input (default 1): an app feeds N inputs per call; fewer are padded",
    default=None,
    type=int,
    minimum=1,
    maximum=MAX_BATCH,
)
#: Dynamic batches are verified at 1 and at this many rows (the verification inputs cycled), one call each.
DYNAMIC_VERIFY_BATCH = 8


def fixed_batch_of(options: Mapping[str, Any]) -> int:
    return int(options.get("batch_size") or 1)


def with_batch(enc: EncoderExport, n: int) -> EncoderExport:
    """``enc`` traced at batch ``n``: example inputs cycled to ``n`` rows, every input and output spec with
    a leading dimension ``n``. Batch 1 returns ``enc`` unchanged."""
    if n == 1:
        return enc
    import torch

    def rows(x: Any) -> Any:
        return x[torch.arange(n) % x.shape[0]].contiguous()

    def spec(s: TensorSpec) -> TensorSpec:
        return TensorSpec(s.name, (n, *s.shape[1:]), s.dtype, s.description)

    return dataclasses.replace(
        enc,
        example_inputs=tuple(rows(x) for x in enc.example_inputs),
        inputs=tuple(spec(s) for s in enc.inputs),
        outputs=tuple(spec(s) for s in enc.outputs),
        metadata={**enc.metadata, "batch_size": str(n)},
    )


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and dim < 0)


def declared_batch(rec: Mapping[str, Any]) -> dict[str, Any]:
    """``{"sizes": [...] | None, "dynamic": bool}`` of a manifest record: its ``batch`` field when written,
    else enumerated sizes in its details, else the leading dimension of its first input (old bundles)."""
    got = rec.get("batch")
    if isinstance(got, Mapping) and "dynamic" in got:
        sizes = got.get("sizes")
        return {"sizes": [int(s) for s in sizes] if sizes else None, "dynamic": bool(got["dynamic"])}
    enumerated = (rec.get("details") or {}).get("batch_sizes")
    if enumerated:
        return {"sizes": sorted(int(s) for s in enumerated), "dynamic": False}
    shape = ((rec.get("inputs") or [{}])[0]).get("shape") or [1]
    if _is_dynamic(shape[0]):
        return {"sizes": None, "dynamic": True}
    return {"sizes": [int(shape[0])], "dynamic": False}


def sizes_to_verify(declared: Mapping[str, Any]) -> list[int]:
    """Every batch size an artifact declares, and 1 (how a single input is fed); a dynamic batch: 1 and
    ``DYNAMIC_VERIFY_BATCH``."""
    if declared["dynamic"]:
        return [1, DYNAMIC_VERIFY_BATCH]
    return sorted({1, *declared["sizes"]})


def takes_batches(rec: Mapping[str, Any]) -> bool:
    """True when feeding the artifact's runner many rows in one call is better than row by row."""
    d = declared_batch(rec)
    return d["dynamic"] or max(d["sizes"] or [1]) > 1


def chunk_plan(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(rows, batch) calls that cover ``n`` rows with batches from ``sizes``: the largest size that fits,
    the last call padded up to the smallest size that holds the rest (batch >= rows)."""
    order = sorted(set(sizes))
    plan, left = [], n
    while left > 0:
        fits = [s for s in order if s <= left]
        size = fits[-1] if fits else next(s for s in order if s >= left)
        plan.append((min(size, left), size))
        left -= min(size, left)
    return plan


def run_chunked(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """``run`` (one call at exactly one of ``sizes`` rows) over all of ``x``; a short chunk is padded with
    copies of its last row and the padding's outputs dropped."""
    import numpy as np

    out, start = [], 0
    for rows, size in chunk_plan(int(x.shape[0]), sizes):
        chunk = x[start : start + rows]
        if size > rows:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - rows, axis=0)])
        got = np.asarray(run(chunk))
        out.append(got.reshape(size, -1)[:rows])
        start += rows
    return np.concatenate(out, axis=0)


def run_rows(runner: Runner, name: str, x: np.ndarray, batched: bool) -> np.ndarray:
    """Embeddings ``[len(x), D]``: the whole batch in one ``run`` when the artifact takes batches (its runner
    cuts it into calls of the sizes the artifact declares), else row by row (a batch-1 artifact)."""
    import numpy as np

    if batched and len(x):
        return np.asarray(runner.run({name: x}), np.float32).reshape(len(x), -1)
    out = [np.asarray(runner.run({name: x[i : i + 1]}), np.float32).reshape(1, -1) for i in range(len(x))]
    return np.concatenate(out, axis=0)

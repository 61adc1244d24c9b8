"""Weight-decompression ops (``constexpr_*``) that coremltools.optimize writes into compressed programs.

Core ML expands them once at load time; the executor evaluates them like any op (the results are cached per
program, see ``Program``). Two generations exist:

- iOS16/17 (attribute form): ``constexpr_affine_dequantize`` (int8/uint8 data, per-tensor or per-axis
  scale/zero point) and ``constexpr_lut_to_dense`` with ``indices`` bit-packed LSB-first into bytes,
  a flat ``lut`` of 2^n entries and the output ``shape``.
- iOS18 (input form): ``constexpr_blockwise_shift_scale`` (``scale * (data - offset)`` with the block size
  per dimension implied by ``data.shape / scale.shape``) and ``constexpr_lut_to_dense`` with unpacked
  ``indices`` in the weight's shape and a ``lut`` of shape ``[g_0..g_{K-1}, 2^n, vector]`` (one table per
  group of each dimension, optional vector palettization along ``vector_axis``). Ops may chain (e.g. a
  per-channel scale applied to a palettized weight).

Values are computed in float64 from the stored integers and tables, then cast to the declared output type
(float32 or float16): exact, since every product of an integer below 2^11 and an fp16/fp32 scale is exact in
float64 before the one rounding.
"""

from __future__ import annotations

import numpy as np

from .ops import Args, OpContext, register_op


def _expand_to(v: np.ndarray, shape: tuple[int, ...], ctx: OpContext, what: str) -> np.ndarray:
    """Repeat a per-block tensor (same rank, each dim dividing the target's) up to ``shape``."""
    if v.ndim != len(shape):
        raise ctx.error(f"{what} has rank {v.ndim}, the data has rank {len(shape)}")
    for axis, (n, m) in enumerate(zip(shape, v.shape)):
        if m == 0 or n % m:
            raise ctx.error(f"{what} dim {axis} ({m}) does not divide the data dim ({n})")
        if m != n:
            v = np.repeat(v, n // m, axis=axis)
    return v


def _along_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scalar stays a scalar; a vector is shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis % rank] = v.size
    return v.reshape(shape)


@register_op("constexpr_affine_dequantize")
def _affine_dequantize(ctx: OpContext, a: Args) -> np.ndarray:
    q = np.asarray(a["quantized_data"]).astype(np.float64)
    axis = a.int("axis", 0)
    zp = _along_axis(np.asarray(a["zero_point"]).astype(np.float64), q.ndim, axis)
    scale = _along_axis(np.asarray(a["scale"]).astype(np.float64), q.ndim, axis)
    return scale * (q - zp)


@register_op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(ctx: OpContext, a: Args) -> np.ndarray:
    data = np.asarray(a["data"]).astype(np.float64)
    scale = _expand_to(np.asarray(a["scale"]).astype(np.float64), data.shape, ctx, "scale")
    offset = a.get("offset")
    if offset is not None:
        data = data - _expand_to(np.asarray(offset).astype(np.float64), data.shape, ctx, "offset")
    return scale * data


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """``count`` unsigned ``nbits``-bit values packed LSB-first (value i occupies bits i*nbits ...)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8).reshape(-1), bitorder="little")
    if bits.size < count * nbits:
        raise ValueError(f"{packed.size} bytes hold fewer than {count} {nbits}-bit values")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.int64)
    return (bits << np.arange(nbits, dtype=np.int64)).sum(axis=1)


@register_op("constexpr_lut_to_dense")
def _lut_to_dense(ctx: OpContext, a: Args) -> np.ndarray:
    lut = np.asarray(a["lut"])
    if "shape" in a:  # iOS16/17: flat LUT, bit-packed indices
        shape = tuple(a.ints("shape"))
        nbits = int(lut.size).bit_length() - 1
        if lut.ndim != 1 or lut.size != 1 << nbits:
            raise ctx.error(f"lut must be a flat table of 2^n entries, got shape {lut.shape}")
        idx = unpack_bits(np.asarray(a["indices"]), nbits, int(np.prod(shape)))
        return lut[idx].reshape(shape)
    return _grouped_lut(ctx, np.asarray(a["indices"]), lut, a.get("vector_axis"))


def _grouped_lut(ctx: OpContext, indices: np.ndarray, lut: np.ndarray, vector_axis: object) -> np.ndarray:
    """iOS18: ``lut[g_0, ..., g_{K-1}, index, :]`` with ``g_k = i_k // (indices.shape[k] / lut.shape[k])``."""
    k = indices.ndim
    if lut.ndim != k + 2:
        raise ctx.error(f"lut rank {lut.ndim} must be indices rank {k} + 2")
    grid = np.indices(indices.shape, sparse=True)
    group = []
    for axis in range(k):
        n, g = indices.shape[axis], lut.shape[axis]
        if g == 0 or n % g:
            raise ctx.error(f"lut dim {axis} ({g}) does not divide the indices dim ({n})")
        group.append(grid[axis] // (n // g))
    out = lut[(*group, indices.astype(np.int64))]  # indices.shape + (vector,)
    vec = lut.shape[-1]
    if vec == 1:
        return out[..., 0]
    if vector_axis is None:
        raise ctx.error("vector palettization (lut vector size > 1) needs vector_axis")
    axis = int(np.asarray(vector_axis).reshape(-1)[0]) % k
    out = np.moveaxis(out, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= vec
    return out.reshape(shape)

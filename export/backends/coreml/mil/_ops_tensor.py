"""Shape, layout, indexing and padding ops."""

from __future__ import annotations

import numpy as np

from .ops import Args, OpContext, norm_axes, register_op


@register_op("reshape")
def _reshape(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    shape = a.ints("shape")
    # iOS17 semantics: a 0 copies the input dim aligned from the right (1 when out of range); -1 is inferred.
    out = []
    for i, d in enumerate(shape):
        if d == 0:
            j = x.ndim - (len(shape) - i)
            d = x.shape[j] if 0 <= j < x.ndim else 1
        out.append(d)
    return x.reshape(out)


@register_op("reshape_like")
def _reshape_like(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    ref, begins, ends = a["ref_tensors"], a.ints("begins"), a.ints("ends")
    shape: list[int] = []
    for r, b, e in zip(ref, begins, ends):
        s = np.asarray(r).shape
        shape.extend(s[b : e if e != -1 else None] if not a.get("end_masks") else s[b:])
    return x.reshape(shape)


@register_op("transpose")
def _transpose(ctx: OpContext, a: Args) -> np.ndarray:
    return np.transpose(np.asarray(a["x"]), a.ints("perm"))


@register_op("concat")
def _concat(ctx: OpContext, a: Args) -> np.ndarray:
    values = [np.asarray(v) for v in a["values"]]
    if all(v.ndim == 0 for v in values):  # MIL concatenates scalars into a rank-1 tensor (shape arithmetic)
        values = [v.reshape(1) for v in values]
    axis = a.int("axis")
    if a.bool("interleave"):
        stacked = np.stack(values, axis=axis % values[0].ndim + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@register_op("stack")
def _stack(ctx: OpContext, a: Args) -> np.ndarray:
    return np.stack([np.asarray(v) for v in a["values"]], axis=a.int("axis"))


@register_op("split")
def _split(ctx: OpContext, a: Args) -> tuple[np.ndarray, ...]:
    x = np.asarray(a["x"])
    axis = a.int("axis")
    sizes = a.get("split_sizes")
    if sizes is not None:
        bounds = np.cumsum(np.asarray(sizes).reshape(-1))[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, a.int("num_splits"), axis=axis))


@register_op("slice_by_index")
def _slice_by_index(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    r = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r)
    bm = [bool(b) for b in np.asarray(a.get("begin_mask", [False] * r)).reshape(-1)]
    em = [bool(b) for b in np.asarray(a.get("end_mask", [False] * r)).reshape(-1)]
    sm = [bool(b) for b in np.asarray(a.get("squeeze_mask", [False] * r)).reshape(-1)]
    idx: list[slice | int] = []
    for i in range(r):
        if sm[i]:
            idx.append(begin[i])
        else:
            idx.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return x[tuple(idx)]


@register_op("slice_by_size")
def _slice_by_size(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    begin, size = a.ints("begin"), a.ints("size")
    idx = tuple(
        slice(b % d if d else 0, None if s == -1 else (b % d if d else 0) + s)
        for b, s, d in zip(begin, size, x.shape)
    )
    return x[idx]


@register_op("squeeze")
def _squeeze(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.get("axes")
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=norm_axes(np.asarray(axes).reshape(-1), x.ndim))


@register_op("expand_dims")
def _expand_dims(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    out_rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(ax % out_rank for ax in axes)))


@register_op("shape")
def _shape(ctx: OpContext, a: Args) -> np.ndarray:
    return np.asarray(np.asarray(a["x"]).shape, dtype=np.int32)


@register_op("tile")
def _tile(ctx: OpContext, a: Args) -> np.ndarray:
    return np.tile(np.asarray(a["x"]), a.ints("reps"))


@register_op("gather")
def _gather(ctx: OpContext, a: Args) -> np.ndarray:
    x, idx = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    axis = a.int("axis", 0) % x.ndim
    bd = a.int("batch_dims", 0)
    _check_indices(ctx, idx, x.shape[axis])
    if bd == 0:
        return np.take(x, idx, axis=axis)
    # batch_dims > 0: gather independently per leading batch index
    lead = x.shape[:bd]
    xs, ids = x.reshape(-1, *x.shape[bd:]), idx.reshape(-1, *idx.shape[bd:])
    out = np.stack([np.take(xi, ii, axis=axis - bd) for xi, ii in zip(xs, ids)])
    return out.reshape(*lead, *out.shape[1:])


def _check_indices(ctx: OpContext, idx: np.ndarray, size: int) -> None:
    if idx.size and (idx.max() >= size or idx.min() < -size):
        raise ctx.error(f"index out of range [{idx.min()}, {idx.max()}] for a dimension of size {size}")


@register_op("gather_along_axis")
def _gather_along_axis(ctx: OpContext, a: Args) -> np.ndarray:
    x, idx = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    axis = a.int("axis", 0) % x.ndim
    _check_indices(ctx, idx, x.shape[axis])
    return np.take_along_axis(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


@register_op("gather_nd")
def _gather_nd(ctx: OpContext, a: Args) -> np.ndarray:
    x, idx = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    bd = a.int("batch_dims", 0)
    if bd:
        lead = x.shape[:bd]
        xs, ids = x.reshape(-1, *x.shape[bd:]), idx.reshape(-1, *idx.shape[bd:])
        out = np.stack([xi[tuple(np.moveaxis(ii, -1, 0))] for xi, ii in zip(xs, ids)])
        return out.reshape(*lead, *out.shape[1:])
    return x[tuple(np.moveaxis(idx, -1, 0))]


@register_op("pad")
def _pad(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    p = a.ints("pad")
    n = len(p) // 2  # pads cover the last n dims
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    mode = a.str("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=a.float("constant_val", 0.0))
    if mode in ("reflect", "replicate"):
        return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")
    raise ctx.error(f"unknown pad mode {mode!r} (constant, reflect, replicate)")


@register_op("band_part")
def _band_part(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    lower, upper = a.int("lower", -1), a.int("upper", -1)
    m, n = x.shape[-2], x.shape[-1]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = np.ones((m, n), bool)
    if lower >= 0:
        keep &= (i - j) <= lower
    if upper >= 0:
        keep &= (j - i) <= upper
    return np.where(keep, x, np.zeros((), x.dtype))


@register_op("reverse")
def _reverse(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axes = a.get("axes")
    return np.flip(x, axis=None if axes is None else norm_axes(np.asarray(axes).reshape(-1), x.ndim))


@register_op("flatten2d")
def _flatten2d(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = a.int("axis", 1) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@register_op("one_hot")
def _one_hot(ctx: OpContext, a: Args) -> np.ndarray:
    idx = np.asarray(a["indices"]).astype(np.int64)
    depth = a.int("one_hot_vector_size")
    axis = a.int("axis", -1)
    eye = np.where(np.arange(depth) == idx[..., None], a.float("on_value", 1.0), a.float("off_value", 0.0))
    return np.moveaxis(eye, -1, axis)

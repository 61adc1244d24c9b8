"""Convolution, pooling, dense, attention and normalization ops."""

from __future__ import annotations

import math

import numpy as np

from .ops import Args, OpContext, norm_axes, register_op


def _spatial_pads(
    ctx: OpContext, a: Args, in_hw: tuple[int, ...], k_eff: tuple[int, ...], strides: tuple[int, ...]
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for pad_type valid/same/same_lower/custom."""
    pad_type = a.str("pad_type", "valid")
    n = len(in_hw)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = a.ints("pad", [0] * 2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s in zip(in_hw, k_eff, strides):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise ctx.error(f"unknown pad_type {pad_type!r} (valid, same, same_lower, custom)")


def _windows(
    xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int], out_hw: tuple[int, int]
) -> list[np.ndarray]:
    """The KH*KW strided views of padded NCHW ``xp`` that a kernel tap sees, each [N, C, OH, OW]."""
    oh, ow = out_hw
    return [
        xp[
            :,
            :,
            i * d[0] : i * d[0] + s[0] * (oh - 1) + 1 : s[0],
            j * d[1] : j * d[1] + s[1] * (ow - 1) + 1 : s[1],
        ]
        for i in range(k[0])
        for j in range(k[1])
    ]


def _as_2d(x: np.ndarray, ctx: OpContext) -> tuple[np.ndarray, bool]:
    if x.ndim == 3:  # 1-D conv/pool: add a unit height
        return x[:, :, None, :], True
    if x.ndim != 4:
        raise ctx.error(f"only 1-D and 2-D spatial inputs are supported, got rank {x.ndim}")
    return x, False


def _out_size(size: int, pads: tuple[int, int], k_eff: int, s: int, ceil_mode: bool = False) -> int:
    span = size + pads[0] + pads[1] - k_eff
    return (-(-span // s) if ceil_mode else span // s) + 1


@register_op("conv")
def _conv(ctx: OpContext, a: Args) -> np.ndarray:
    x, one_d = _as_2d(np.asarray(a["x"], dtype=np.float32), ctx)
    w = np.asarray(a["weight"], dtype=np.float32)
    w = w[:, :, None, :] if one_d else w
    n_sp = 1 if one_d else 2
    strides = tuple(a.ints("strides", [1] * n_sp))
    dil = tuple(a.ints("dilations", [1] * n_sp))
    if one_d:
        strides, dil = (1, *strides), (1, *dil)
    groups = a.int("groups", 1)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if c != cg * groups or o % groups:
        raise ctx.error(f"weight {w.shape} does not fit input channels {c} with groups={groups}")
    k_eff = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    pads = _spatial_pads(
        ctx, a, (wd,) if one_d else (h, wd), k_eff[1:] if one_d else k_eff, strides[1:] if one_d else strides
    )
    pads = [(0, 0), *pads] if one_d else pads
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    oh = _out_size(h, pads[0], k_eff[0], strides[0])
    ow = _out_size(wd, pads[1], k_eff[1], strides[1])
    taps = _windows(xp, (kh, kw), strides, dil, (oh, ow))
    if cg == 1 and o == c:  # depthwise: accumulate taps, no im2col copy
        y = np.zeros((n, o, oh, ow), np.float32)
        wf = w.reshape(o, kh * kw)
        for t, view in enumerate(taps):
            y += view * wf[:, t][None, :, None, None]
    else:
        og = o // groups
        cols = np.stack(taps, axis=2).reshape(n, groups, cg * kh * kw, oh * ow)  # [N, G, Cg*K, OH*OW]
        y = np.matmul(w.reshape(groups, og, cg * kh * kw)[None], cols).reshape(n, o, oh, ow)
    bias = a.get("bias")
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(1, -1, 1, 1)
    return y[:, :, 0, :] if one_d else y


def _pool(ctx: OpContext, a: Args, kind: str) -> np.ndarray:
    x, one_d = _as_2d(np.asarray(a["x"], dtype=np.float32), ctx)
    k = a.ints("kernel_sizes")
    s = a.ints("strides", [1] * len(k))
    k, s = ((1, *k), (1, *s)) if one_d else (tuple(k), tuple(s))
    n, c, h, w = x.shape
    pads = _spatial_pads(ctx, a, (w,) if one_d else (h, w), k[1:] if one_d else k, s[1:] if one_d else s)
    pads = [(0, 0), *pads] if one_d else pads
    ceil_mode = a.bool("ceil_mode")
    oh, ow = (_out_size(h, pads[0], k[0], s[0], ceil_mode), _out_size(w, pads[1], k[1], s[1], ceil_mode))
    # ceil_mode windows may run past the padded input: extend the padding at the end
    extra = [
        max((oh - 1) * s[0] + k[0] - (h + sum(pads[0])), 0),
        max((ow - 1) * s[1] + k[1] - (w + sum(pads[1])), 0),
    ]
    full = ((0, 0), (0, 0), (pads[0][0], pads[0][1] + extra[0]), (pads[1][0], pads[1][1] + extra[1]))
    fill = -np.inf if kind == "max" else 0.0
    taps = _windows(np.pad(x, full, constant_values=fill), k, s, (1, 1), (oh, ow))
    if kind == "max":
        y = np.max(np.stack(taps), axis=0)
    else:
        y = np.sum(np.stack(taps), axis=0)
        if a.bool("exclude_padding_from_average"):
            ones = np.pad(np.ones((1, 1, h, w), np.float32), full)
            count = np.sum(np.stack(_windows(ones, k, s, (1, 1), (oh, ow))), axis=0)
        else:  # padding counts, the ceil_mode overhang does not
            core = np.pad(
                np.ones((1, 1, h + sum(pads[0]), w + sum(pads[1])), np.float32),
                ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])),
            )
            count = np.sum(np.stack(_windows(core, k, s, (1, 1), (oh, ow))), axis=0)
        y = y / count
    return y[:, :, 0, :] if one_d else y


@register_op("avg_pool")
def _avg_pool(ctx: OpContext, a: Args) -> np.ndarray:
    return _pool(ctx, a, "avg")


@register_op("max_pool")
def _max_pool(ctx: OpContext, a: Args) -> np.ndarray:
    return _pool(ctx, a, "max")


@register_op("linear")
def _linear(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"], np.float32)
    w = np.asarray(a["weight"], np.float32)
    y = np.matmul(x, w.T)
    bias = a.get("bias")
    return y if bias is None else y + np.asarray(bias, np.float32)


@register_op("matmul")
def _matmul(ctx: OpContext, a: Args) -> np.ndarray:
    x, y = np.asarray(a["x"]), np.asarray(a["y"])
    if a.bool("transpose_x") and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.bool("transpose_y") and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@register_op("einsum")
def _einsum(ctx: OpContext, a: Args) -> np.ndarray:
    return np.einsum(a.str("equation"), *[np.asarray(v) for v in a["values"]])


@register_op("layer_norm")
def _layer_norm(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"], np.float32)
    axes = a.get("axes")
    axes = tuple(range(x.ndim)) if axes is None else norm_axes(np.asarray(axes).reshape(-1), x.ndim)
    # fp16 emulation rounds the statistics: (x - mean)^2 overflows once |x - mean| >= 256, the classic
    # fp16 LayerNorm failure; the variance then becomes inf and the output silently collapses to beta.
    mean = ctx.round(np.mean(x, axis=axes, keepdims=True), "mean")
    d = ctx.round(x - mean, "x-mean")
    var = ctx.round(np.mean(ctx.round(d * d, "(x-mean)^2"), axis=axes, keepdims=True), "variance")
    y = d / np.sqrt(var + a.float("epsilon", 1e-5))
    gamma, beta = a.get("gamma"), a.get("beta")
    # gamma/beta have the shape of the normalized axes (trailing when axes are the last dims)
    if gamma is not None:
        y = y * _affine_shape(np.asarray(gamma, np.float32), x.ndim, axes)
    if beta is not None:
        y = y + _affine_shape(np.asarray(beta, np.float32), x.ndim, axes)
    return y


def _affine_shape(p: np.ndarray, rank: int, axes: tuple[int, ...]) -> np.ndarray:
    shape = [1] * rank
    for ax, size in zip(axes, p.shape if p.ndim == len(axes) else p.reshape(-1).shape):
        shape[ax] = size
    return p.reshape(shape)


@register_op("batch_norm")
def _batch_norm(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"], np.float32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(a["mean"]).reshape(shape)
    var = np.asarray(a["variance"]).reshape(shape)
    y = (x - mean) / np.sqrt(var + a.float("epsilon", 1e-5))
    return _scale_shift(y, a, shape)


def _scale_shift(y: np.ndarray, a: Args, shape: tuple[int, ...]) -> np.ndarray:
    """Optional per-channel ``gamma`` / ``beta`` of a normalization op."""
    if a.get("gamma") is not None:
        y = y * np.asarray(a["gamma"]).reshape(shape)
    if a.get("beta") is not None:
        y = y + np.asarray(a["beta"]).reshape(shape)
    return y


@register_op("instance_norm")
def _instance_norm(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"], np.float32)
    axes = tuple(range(2, x.ndim))
    d = x - x.mean(axis=axes, keepdims=True)
    y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + a.float("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return _scale_shift(y, a, shape)


@register_op("l2_norm")
def _l2_norm(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"], np.float32)
    axes = tuple(range(max(x.ndim - 3, 0), x.ndim))  # MIL: the last three (or fewer) dims
    norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
    return x / np.maximum(norm, a.float("epsilon", 1e-6))


@register_op("scaled_dot_product_attention")
def _sdpa(ctx: OpContext, a: Args) -> np.ndarray:
    q, k, v = (np.asarray(a[n], np.float32) for n in ("query", "key", "value"))
    scores = ctx.round(np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(math.sqrt(q.shape[-1])), "scores")
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    p = ctx.round(e / np.sum(e, axis=-1, keepdims=True), "softmax")
    return np.matmul(p, v)

"""Activation quantization ops (iOS17 ``quantize`` / ``dequantize``) that coremltools'
``linear_quantize_activations`` inserts around convs, linears, pools and adds (W8A8 / A8W4 programs).

MIL op spec (coremltools ``ops/defs/iOS17/quantization_ops.py``):

- ``quantize(input, scale, zero_point?, axis?, output_dtype)``:
  ``clip(round(input / scale) + zero_point)`` to the range of ``output_dtype`` (int8 [-128, 127], uint8
  [0, 255]); a scalar scale/zero point applies to the whole tensor, a vector one along ``axis``.
- ``dequantize(input, scale, zero_point?, axis?)``: ``scale * (input - zero_point)``, in the scale's float
  type.

Rounding is half to even (``np.rint``, as coremltools' own value inference rounds with ``np.around``). The
division runs in float32 on the (fp16-valued) input and scale; the executor casts the float result of
``dequantize`` to the declared output type.
"""

from __future__ import annotations

import numpy as np

from ._ops_constexpr import _along_axis
from .ops import Args, OpContext, register_op

_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _params(ctx: OpContext, a: Args, rank: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(a["scale"]).astype(np.float32)
    zp = a.get("zero_point")
    zp = np.zeros((), np.float32) if zp is None else np.asarray(zp).astype(np.float32)
    if scale.size > 1 and "axis" not in a:
        raise ctx.error(f"a vector scale ({scale.size} values) needs axis")
    axis = a.int("axis", 0)
    return _along_axis(scale, rank, axis), _along_axis(zp, rank, axis)


@register_op("quantize")
def _quantize(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["input"], np.float32)
    dtype = a.str("output_dtype")
    if dtype not in _RANGES:
        raise ctx.error(f"output_dtype must be int8 or uint8, got {dtype!r}")
    scale, zp = _params(ctx, a, x.ndim)
    if not np.all(scale != 0):
        raise ctx.error("scale has a zero")
    lo, hi = _RANGES[dtype]
    q = np.clip(np.rint(x / scale) + zp, lo, hi)
    return q.astype(np.int8 if dtype == "int8" else np.uint8)


@register_op("dequantize")
def _dequantize(ctx: OpContext, a: Args) -> np.ndarray:
    q = np.asarray(a["input"])
    if q.dtype not in (np.int8, np.uint8):
        raise ctx.error(f"input must be int8 or uint8, got {q.dtype}")
    scale, zp = _params(ctx, a, q.ndim)
    return scale * (q.astype(np.float32) - zp)

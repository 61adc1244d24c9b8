"""Elementwise, activation, comparison, reduction and cast ops (MIL iOS15-iOS18 semantics)."""

from __future__ import annotations

import math

import numpy as np

from .ops import Args, OpContext, norm_axes, register_op

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    """Exact erf in float64. NumPy has none; scipy (not a declared dependency, 6x faster) when present, else
    vectorized ``math.erf`` (~0.2 s per million values). Polynomial approximations are only ~1e-7 accurate."""
    x = np.asarray(x, dtype=np.float64)
    try:
        from scipy.special import erf as sp_erf
    except ImportError:
        return _ERF(x) if x.size else x
    return sp_erf(x)


_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _binary(fn):  # noqa: ANN001, ANN202
    def impl(ctx: OpContext, a: Args) -> np.ndarray:
        return fn(np.asarray(a["x"]), np.asarray(a["y"]))

    return impl


for _name, _fn in _BINARY.items():
    register_op(_name)(_binary(_fn))


@register_op("floor_div")
def _floor_div(ctx: OpContext, a: Args) -> np.ndarray:
    return np.floor_divide(np.asarray(a["x"]), np.asarray(a["y"]))


@register_op("mod")
def _mod(ctx: OpContext, a: Args) -> np.ndarray:
    return np.mod(np.asarray(a["x"]), np.asarray(a["y"]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free form


_UNARY = {
    "abs": np.abs,
    "sign": np.sign,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,
    "exp": np.exp,
    "exp2": np.exp2,
    "sqrt": np.sqrt,
    "square": np.square,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "atanh": np.arctanh,
    "logical_not": np.logical_not,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "relu6": lambda x: np.clip(x, 0, 6),
    "silu": lambda x: x * _sigmoid(x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(0, x),
    "identity": lambda x: x,
    "erf": lambda x: erf(x).astype(np.result_type(x, np.float32)),
}


def _unary(fn):  # noqa: ANN001, ANN202
    def impl(ctx: OpContext, a: Args) -> np.ndarray:
        return fn(np.asarray(a["x"]))

    return impl


for _name, _fn in _UNARY.items():
    register_op(_name)(_unary(_fn))


@register_op("rsqrt")
def _rsqrt(ctx: OpContext, a: Args) -> np.ndarray:
    return 1.0 / np.sqrt(a["x"] + a.float("epsilon", 1e-12))


@register_op("inverse")
def _inverse(ctx: OpContext, a: Args) -> np.ndarray:
    return 1.0 / (a["x"] + a.float("epsilon", 1e-4))


@register_op("log")
def _log(ctx: OpContext, a: Args) -> np.ndarray:
    return np.log(a["x"] + a.float("epsilon", 1e-45))


@register_op("gelu")
def _gelu(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    mode = a.str("mode", "EXACT")
    if mode == "EXACT":
        return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise ctx.error(f"unknown gelu mode {mode!r} (EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION)")


@register_op("leaky_relu")
def _leaky_relu(ctx: OpContext, a: Args) -> np.ndarray:
    x = a["x"]
    return np.where(x >= 0, x, a.float("alpha", 0.01) * x)


@register_op("elu")
def _elu(ctx: OpContext, a: Args) -> np.ndarray:
    x = a["x"]
    return np.where(x > 0, x, a.float("alpha", 1.0) * (np.exp(np.minimum(x, 0)) - 1))


@register_op("sigmoid_hard")
def _sigmoid_hard(ctx: OpContext, a: Args) -> np.ndarray:
    return np.clip(a.float("alpha", 0.2) * a["x"] + a.float("beta", 0.5), 0, 1)


@register_op("clip")
def _clip(ctx: OpContext, a: Args) -> np.ndarray:
    return np.minimum(np.maximum(a["x"], a.float("alpha")), a.float("beta"))


@register_op("clamped_relu")
def _clamped_relu(ctx: OpContext, a: Args) -> np.ndarray:
    x = a["x"]
    return np.minimum(np.where(x >= 0, x, a.float("alpha") * x), a.float("beta"))


@register_op("threshold")
def _threshold(ctx: OpContext, a: Args) -> np.ndarray:
    return np.maximum(a["x"], a.float("alpha"))


@register_op("select")
def _select(ctx: OpContext, a: Args) -> np.ndarray:
    return np.where(np.asarray(a["cond"]).astype(bool), a["a"], a["b"])


@register_op("cast")
def _cast(ctx: OpContext, a: Args) -> np.ndarray:
    # The executor casts every result to the declared output type; float -> int truncates toward zero.
    return np.asarray(a["x"])


@register_op("softmax")
def _softmax(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = a.int("axis", -1)
    e = ctx.round(np.exp(x - np.max(x, axis=axis, keepdims=True)), "exp(x-max)")
    s = ctx.round(np.sum(e, axis=axis, keepdims=True), "sum(exp)")
    return e / s


def _axes(a: Args, x: np.ndarray) -> tuple[int, ...]:
    axes = a.get("axes")
    if axes is None:
        return tuple(range(x.ndim))
    return norm_axes(np.asarray(axes).reshape(-1), x.ndim)


_REDUCE = {
    "reduce_mean": np.mean,
    "reduce_sum": np.sum,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.logaddexp.reduce(x, axis=axis, keepdims=keepdims),
}


def _reduce(fn):  # noqa: ANN001, ANN202
    def impl(ctx: OpContext, a: Args) -> np.ndarray:
        x = np.asarray(a["x"])
        # float32 accumulation (pairwise in NumPy); the output is rounded to the declared type afterwards.
        return np.asarray(fn(x, axis=_axes(a, x), keepdims=a.bool("keep_dims", False)))

    return impl


for _name, _fn in _REDUCE.items():
    register_op(_name)(_reduce(_fn))


@register_op("reduce_argmax", "reduce_argmin")
def _reduce_arg(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = a.int("axis", -1)
    fn = np.argmax if ctx.op_type == "reduce_argmax" else np.argmin
    return fn(x, axis=axis, keepdims=a.bool("keep_dims", False)).astype(np.int32)


@register_op("fill")
def _fill(ctx: OpContext, a: Args) -> np.ndarray:
    return np.full(a.ints("shape"), a.get("value", 0.0))


@register_op("fill_like")
def _fill_like(ctx: OpContext, a: Args) -> np.ndarray:
    return np.full(np.asarray(a["ref_tensor"]).shape, a.get("value", 0.0))


@register_op("range_1d")
def _range_1d(ctx: OpContext, a: Args) -> np.ndarray:
    return np.arange(np.asarray(a["start"]).item(), np.asarray(a["end"]).item(), np.asarray(a["step"]).item())


@register_op("cumsum")
def _cumsum(ctx: OpContext, a: Args) -> np.ndarray:
    x = np.asarray(a["x"])
    axis = a.int("axis", 0)
    if a.bool("reverse"):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if a.bool("exclusive"):
        y = y - x
    return np.flip(y, axis) if a.bool("reverse") else y

"""Count multiply-accumulates from the ops a module actually dispatches.

A ``TorchDispatchMode`` sees the aten ops after composite decomposition (``nn.Linear`` -> ``addmm``/``mm``,
``matmul`` -> ``mm``/``bmm``, attention -> an SDPA kernel or its bmm decomposition), so whatever the Python
code
looks like, the count is of the graph that runs. Counted, as in the reference's section 6: convolutions,
matrix multiplies (linear layers, attention matmuls) and fused SDPA kernels. Not counted: norms, activations,
elementwise ops, softmax and embedding gathers. FLOPs ~= 2 x MACs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def _mm(args: tuple, out: Any) -> int:  # mm(a[m,k], b[k,n])
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args: tuple, out: Any) -> int:  # addmm(bias, a, b)
    return _mm(args[1:], out)


def _bmm(args: tuple, out: Any) -> int:  # bmm(a[b,m,k], b[b,k,n])
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args: tuple, out: Any) -> int:
    return _bmm(args[1:], out)


def _convolution(args: tuple, out: Any) -> int:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    per_output = w.shape[1] * _numel(w.shape[2:])  # weight [out, in/groups, *k]
    if transposed:  # weight [in, out/groups, *k]: every input element feeds out/groups * k outputs
        return x.numel() * per_output
    result = out[0] if isinstance(out, tuple | list) else out
    return result.numel() * per_output


def _sdpa(args: tuple, out: Any) -> int:
    q, k, v = args[0], args[1], args[2]  # [..., L, E], [..., S, E], [..., S, Ev]
    batch = _numel(q.shape[:-2])
    seq_q, emb = q.shape[-2], q.shape[-1]
    seq_k, emb_v = k.shape[-2], v.shape[-1]
    return batch * seq_q * seq_k * (emb + emb_v)


def _linear(args: tuple, out: Any) -> int:  # linear(x[..., in], w[out, in])
    x, w = args[0], args[1]
    return x.numel() * w.shape[0]


def _matmul(args: tuple, out: Any) -> int:  # any broadcasted matmul: every output element is a k-long dot
    a = args[0]
    result = out[0] if isinstance(out, tuple | list) else out
    return result.numel() * a.shape[-1]


def _conv_nd(args: tuple, out: Any) -> int:  # conv{1,2,3}d(input, weight, ...)
    w = args[1]
    result = out[0] if isinstance(out, tuple | list) else out
    return result.numel() * w.shape[1] * _numel(w.shape[2:])


def _conv_transpose_nd(args: tuple, out: Any) -> int:  # weight [in, out/groups, *k]
    x, w = args[0], args[1]
    return x.numel() * w.shape[1] * _numel(w.shape[2:])


# Keyed by overload packet name: depending on the torch version and grad mode, the mode sees either the
# composite op (linear, conv2d, matmul, scaled_dot_product_attention) or what it decomposes to, never both
# (ops called from inside the handler run with the mode disabled).
_COUNTERS: dict[str, Callable[[tuple, Any], int]] = {
    "mm": _mm,
    "addmm": _addmm,
    "bmm": _bmm,
    "baddbmm": _baddbmm,
    "matmul": _matmul,
    "linear": _linear,
    "convolution": _convolution,
    "_convolution": _convolution,
    "conv1d": _conv_nd,
    "conv2d": _conv_nd,
    "conv3d": _conv_nd,
    "conv_transpose1d": _conv_transpose_nd,
    "conv_transpose2d": _conv_transpose_nd,
    "conv_transpose3d": _conv_transpose_nd,
    "scaled_dot_product_attention": _sdpa,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_flash_attention": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa,
    "_scaled_dot_product_attention_math": _sdpa,
}


class _MacCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        fn = _COUNTERS.get(name)
        if fn is not None:
            self.by_op[name] += int(fn(args, out))
            self.calls[name] += 1
        return out


@dataclass(frozen=True)
class MacReport:
    """MACs of one forward pass at the given inputs, plus the weight bytes a forward pass must stream."""

    macs: int
    by_op: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    param_bytes: int = 0  # every parameter and persistent buffer, as stored
    streamed_param_bytes: int = 0  # minus embedding tables (only a few rows are gathered per inference)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def weight_bytes(module: nn.Module) -> tuple[int, int]:
    """(all parameter + buffer bytes, the same without nn.Embedding weights), counting shared tensors once."""
    seen: set[int] = set()
    total = 0
    embedding_ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    embedding = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        if id(tensor) in embedding_ids:
            embedding += nbytes
    return total, total - embedding


def count_macs(module: nn.Module, example_inputs: Sequence[Any]) -> MacReport:
    """Run ``module(*example_inputs)`` once under the counter (no grad) and report MACs per op family."""
    counter = _MacCounter()
    with torch.inference_mode(), counter:
        module(*example_inputs)
    total, streamed = weight_bytes(module)
    return MacReport(
        macs=sum(counter.by_op.values()),
        by_op=dict(counter.by_op),
        calls=dict(counter.calls),
        param_bytes=total,
        streamed_param_bytes=streamed,
    )

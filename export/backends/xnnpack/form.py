"""Graphs shaped for XNNPACK: export-time rewrites shared by the XNNPACK-backed targets.

XNNPACK (as partitioned by ExecuTorch 1.5.1) has no LayerNorm, select, squeeze, expand or gather op, and
takes ``mean`` only over the two innermost axes of a 4-D tensor with ``keepdim=True``. Each op it cannot
take cuts the graph into another delegated subgraph, with a layout conversion and portable kernels at
every cut. The rewrites below express the same arithmetic with ops it does take; the train-time modules,
their numerics and state-dict keys are untouched (only a deep copy is rewritten, at export time).

- ``xnnpack_module``: module-level deploy forms: LayerNorm as ``linear`` reductions (mean and variance by
  a ones vector) + elementwise ops; the text encoder's EOT pooling as a one-hot ``bmm`` whose weights are
  computed from the ids before the delegate (integer ops stay outside, next to the embedding gather).
- ``TiledDepthwise``: a depthwise convolution larger than 5x5 (MobileCLIP's 7x7 ConvFFN / PatchEmbed
  mixers) as 5x5 depthwise tiles over shifted slices: XNNPACK has no depthwise microkernel above 25 taps
  and runs 7x7 as a grouped IGEMM (~40x slower than onnxruntime for that op on this CPU).
- ``ShapeOpsAsViews``: an edge-dialect pass: ``select`` -> ``slice`` + ``view``; ``squeeze`` /
  ``unsqueeze`` / same-size ``expand`` -> ``view``; 4-D ``mean`` over H, W without keepdim -> keepdim +
  ``view``. Pure data movement: bit-identical results.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class MatmulLayerNorm(nn.Module):
    """LayerNorm over the last axis with its mean and variance as ``linear`` reductions (XNNPACK FC).

    The averaging weights are named ``MEAN_WEIGHTS`` so quantizers can leave these reductions in fp32.
    """

    MEAN_WEIGHTS = "layer_norm_mean_weights"

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        (d,) = norm.normalized_shape
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        mean = torch.full((1, d), 1.0 / d, dtype=norm.weight.dtype)
        self.register_buffer(self.MEAN_WEIGHTS, mean, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        mean = getattr(self, self.MEAN_WEIGHTS)
        centered = x - nn.functional.linear(x, mean)
        var = nn.functional.linear(centered * centered, mean)
        y = centered * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.weight is not None else y


class TiledDepthwise(nn.Module):
    """A k x k depthwise convolution (k > 5) as a sum of small depthwise convolutions over shifted slices.

    XNNPACK runs depthwise kernels of up to 25 taps with its DWConv microkernels; a 7x7 (49-tap) one falls
    back to a grouped IGEMM, ~40x slower than onnxruntime's kernel for the same op (see the README). The
    kernel's rows and columns are cut into spans of at most 5 (7 = 5 + 2), giving 5x5, 5x2, 2x5 and 2x2
    tiles with no zero taps; tile (p, q) reads the padded input from row p, column q with the same stride.
    Same products, summed in another order (fp32 rounding only).
    """

    TILE = 5

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k, t = conv.kernel_size[0], self.TILE
        w = conv.weight.detach()
        spans = [(start, min(t, k - start)) for start in range(0, k, t)]
        self.offsets = [(p, q, ph, qw) for p, ph in spans for q, qw in spans]
        self.tiles = nn.ParameterList(
            [
                nn.Parameter(w[:, :, p : p + ph, q : q + qw].clone(), requires_grad=False)
                for p, q, ph, qw in self.offsets
            ]
        )
        self.bias = conv.bias
        self.k = k
        self.stride, self.pad, self.groups = conv.stride[0], conv.padding[0], conv.groups

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        h, w = x.shape[-2:]
        hp, wp = h + 2 * self.pad, w + 2 * self.pad
        out_h, out_w = (hp - self.k) // s + 1, (wp - self.k) // s + 1
        xp = nn.functional.pad(x, (self.pad, self.pad, self.pad, self.pad))
        y = None
        for (p, q, ph, qw), tile in zip(self.offsets, self.tiles):
            part = xp[:, :, p : p + s * (out_h - 1) + ph, q : q + s * (out_w - 1) + qw]
            z = nn.functional.conv2d(part, tile, None, s, 0, 1, self.groups)
            y = z if y is None else y + z
        return y + self.bias.reshape(1, -1, 1, 1) if self.bias is not None else y


def _tileable(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d:
        return False
    k = m.kernel_size
    return (
        k[0] == k[1] > TiledDepthwise.TILE
        and m.groups == m.in_channels == m.out_channels
        and m.stride[0] == m.stride[1]
        and m.dilation == (1, 1)
        and isinstance(m.padding, tuple)
        and m.padding[0] == m.padding[1]
        and m.padding_mode == "zeros"
    )


def _pooled_text_forward(self: Any, ids: Tensor) -> Tensor:
    """EOT pooling as ``one_hot(argmax(ids)) @ states``: exact (the other rows are multiplied by 0)."""
    x = self.forward_tokens(ids)
    positions = torch.arange(ids.shape[-1], device=ids.device)
    onehot = (positions == ids.argmax(dim=-1, keepdim=True)).to(x.dtype).unsqueeze(1)  # [B, 1, L]
    return (onehot @ x).reshape(x.shape[0], x.shape[-1]) @ self.projection_layer


def xnnpack_module(module: nn.Module, *, layer_norm: bool = True) -> nn.Module:
    """Rewrite ``module`` (a deep copy owned by the caller) in place into its XNNPACK deploy form.

    ``layer_norm=False`` keeps the LayerNorms (fp16 graphs compute them in fp32 islands instead).
    """
    from mobileclip_export.models.text import TextTransformer

    norms = [
        (name, m)
        for name, m in module.named_modules()
        if layer_norm and type(m) is nn.LayerNorm and len(m.normalized_shape) == 1 and name
    ]
    for name, norm in norms:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, MatmulLayerNorm(norm))
    convs = [(name, m) for name, m in module.named_modules() if _tileable(m) and name]
    for name, conv in convs:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, TiledDepthwise(conv))
    texts = [m for m in module.modules() if isinstance(m, TextTransformer)]
    for text in texts:
        text.forward = _pooled_text_forward.__get__(text)
    log.debug(
        "XNNPACK form: %d LayerNorm(s) as linear reductions, %d tiled depthwise conv(s), %d text pooling(s)",
        len(norms),
        len(convs),
        len(texts),
    )
    return module


def shape_ops_as_views() -> Any:
    """The edge-dialect pass (an ExecuTorch ``ExportPass`` instance); imported lazily with ExecuTorch."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import ExportPass

    edge = exir_ops.edge.aten

    class ShapeOpsAsViews(ExportPass):
        def call_operator(self, op, args, kwargs, meta):  # noqa: ANN001, ANN201 - ExportPass signature
            out_shape = list(meta["val"].shape) if hasattr(meta.data.get("val"), "shape") else None
            if op == edge.select_copy.int:
                x, dim, index = args
                index = index % x.to_tensor().shape[dim]
                bounds = (x, dim, index, index + 1, 1)
                sliced = super().call_operator(edge.slice_copy.Tensor, bounds, {}, meta)
                return super().call_operator(edge.view_copy.default, (sliced, out_shape), {}, meta)
            if op in (edge.squeeze_copy.dims, edge.squeeze_copy.dim, edge.unsqueeze_copy.default):
                return super().call_operator(edge.view_copy.default, (args[0], out_shape), {}, meta)
            if op == edge.expand_copy.default and list(args[0].to_tensor().shape) == out_shape:
                return super().call_operator(edge.view_copy.default, (args[0], out_shape), {}, meta)
            if op == edge.mean.dim and _is_spatial_mean(args, kwargs):
                keep = super().call_operator(edge.mean.dim, (args[0], args[1], True), {}, meta)
                return super().call_operator(edge.view_copy.default, (keep, out_shape), {}, meta)
            return super().call_operator(op, args, kwargs, meta)

    return ShapeOpsAsViews()


def _is_spatial_mean(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    x, dims = args[0], args[1]
    keepdim = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    rank = x.to_tensor().dim()
    return rank == 4 and not keepdim and sorted(d % rank for d in dims) == [2, 3] and not kwargs.get("dtype")

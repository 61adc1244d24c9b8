"""Graphs shaped for XNNPACK: export-time rewrites shared by the XNNPACK-backed targets.

XNNPACK (as partitioned by ExecuTorch 1.5.1) has no LayerNorm, select, squeeze, expand or gather op, and
takes ``mean`` only over the two innermost axes of a 4-D tensor with ``keepdim=True``. Each op it cannot
take cuts the graph into another delegated subgraph, with a layout conversion and portable kernels at
every cut. The rewrites below express the same arithmetic with ops it does take; the train-time modules,
their numerics and state-dict keys are untouched (only a deep copy is rewritten, at export time).

- ``xnnpack_module``: module-level deploy forms: LayerNorm as ``linear`` reductions (mean and variance by
  a ones vector) + elementwise ops; the text encoder's EOT pooling as a one-hot ``bmm`` whose weights are
  computed from the ids before the delegate (integer ops stay outside, next to the embedding gather).
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
    """LayerNorm over the last axis with its mean and variance as ``linear`` reductions (XNNPACK FC)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        (d,) = norm.normalized_shape
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("avg", torch.full((1, d), 1.0 / d, dtype=norm.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        centered = x - nn.functional.linear(x, self.avg)
        var = nn.functional.linear(centered * centered, self.avg)
        y = centered * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.weight is not None else y


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
    texts = [m for m in module.modules() if isinstance(m, TextTransformer)]
    for text in texts:
        text.forward = _pooled_text_forward.__get__(text)
    log.debug(
        "XNNPACK form: %d LayerNorm(s) as linear reductions, %d text pooling(s)",
        len(norms),
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

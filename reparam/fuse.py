"""The tensor math of structural reparameterization, in one place.

Every function here is pure: it reads tensors / modules and returns new tensors; nothing is modified.
Conventions: conv weights are ``[C_out, C_in / groups, kh, kw]``; linear weights are ``[out, in]``.

Algebra used by the rules (σ = sqrt(running_var + eps)):
- conv followed by BN:       W' = W · γ/σ (per output channel),  b' = β + (b − μ) · γ/σ
- identity as a conv:        K[i, i mod (C/groups), kh//2, kw//2] = 1   (so x = conv(x, K))
- small kernel inside large: zero-pad symmetrically; valid when both convs share stride and their
                             paddings are k//2 (their sampling centres coincide)
- per-channel affine a·x + c before a linear/1x1 map y = W x + b:  W' = W · diag(a),  b' = b + W c
- per-channel scale s after a linear/conv y = W x + b:             W' = diag(s) · W,  b' = s · b
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Lives with the blocks (checkpoint lifting needs it too, and models must not import reparam).
from mobileclip_export.models.blocks.kernels import identity_kernel as identity_kernel

_NormWithStats = nn.BatchNorm2d | nn.BatchNorm1d


def _pair(k: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(k, int):
        return (k, k)
    kh, kw = k
    return (int(kh), int(kw))


def bn_affine(bn: _NormWithStats) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` such that ``bn(x) == scale * x + shift`` in eval mode."""
    mean = bn.running_mean
    var = bn.running_var
    if mean is None or var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be fused")
    std = torch.sqrt(var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / std
    return scale.detach(), (beta - mean * scale).detach()


def fuse_conv_bn(weight: Tensor, bias: Tensor | None, bn: _NormWithStats) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BN that follows a conv (weight ``[C_out, ...]``, optional bias) into the conv."""
    scale, shift = bn_affine(bn)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w = weight.detach() * scale.reshape(shape)
    b = shift if bias is None else shift + bias.detach() * scale
    return w, b


def pad_kernel_to(kernel: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Zero-pad a ``[..., kh, kw]`` kernel symmetrically to ``kernel_size`` (both odd, or same parity)."""
    th, tw = _pair(kernel_size)
    kh, kw = kernel.shape[-2:]
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {(kh, kw)} kernel inside {(th, tw)}")
    if dh == 0 and dw == 0:
        return kernel
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def fold_input_affine(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold ``x -> scale*x + shift`` (per input feature) into a following linear / 1x1 map ``W x + b``."""
    w = weight.detach()
    w2d = w.reshape(w.shape[0], w.shape[1], -1)
    if w2d.shape[-1] != 1:
        raise ValueError(
            "an input affine folds exactly only into a linear or 1x1 map (padding would break it)"
        )
    new_w = w * scale.reshape((1, -1) + (1,) * (w.dim() - 2))
    new_b = w2d[..., 0] @ shift
    if bias is not None:
        new_b = new_b + bias.detach()
    return new_w, new_b


def scale_output(weight: Tensor, bias: Tensor | None, scale: Tensor) -> tuple[Tensor, Tensor | None]:
    """Fold a per-output-channel multiply ``s * (W x + b)`` into ``(W, b)``; ``scale`` has C elements."""
    s = scale.detach().reshape(-1)
    w = weight.detach() * s.reshape((-1,) + (1,) * (weight.dim() - 1))
    b = None if bias is None else bias.detach() * s
    return w, b


def conv_from(template: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    """A new Conv2d with ``template``'s geometry holding ``weight`` / ``bias`` (bias created iff given)."""
    conv = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        template.kernel_size,
        stride=template.stride,
        padding=template.padding,
        dilation=template.dilation,
        groups=template.groups,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def linear_from(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    lin = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin

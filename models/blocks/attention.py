"""Attention stage of MCi: channel LayerNorm, multi-head self-attention over H·W tokens, AttentionBlock.

``AttentionBlock`` (Apple names): ``x + layer_scale_1 * token_mixer(norm(x))`` then
``x + layer_scale_2 * convffn(x)``; ``norm`` is BatchNorm2d (MCi0-2) or ``LayerNorm2d`` (MCi3/4).
``MHSA`` keys: ``qkv`` (no bias at train time), ``proj``; head_dim 32; scale applied to q before q·kᵀ.
The attention is written out as matmul + softmax (no fused SDPA) so every exporter sees the same ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobileclip_export.models.blocks.convffn import ConvFFN


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (timm ``LayerNorm2d``; keys ``weight``, ``bias``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MHSA(nn.Module):
    def __init__(self, dim: int, head_dim: int = 32, *, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f"dim {dim} must be a multiple of head_dim {head_dim}")
        self.dim, self.head_dim, self.num_heads = dim, head_dim, dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = h * w
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        qkv = self.qkv(tokens).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out = self.proj(out)
        return out.transpose(1, 2).reshape(b, c, h, w)


class AttentionBlock(nn.Module):
    def __init__(
        self, dim: int, mlp_ratio: float = 3.0, *, norm: str = "batchnorm", layer_scale_init: float = 1e-5
    ) -> None:
        super().__init__()
        if norm == "batchnorm":
            self.norm: nn.Module = nn.BatchNorm2d(dim)
        elif norm == "layernorm":
            self.norm = LayerNorm2d(dim, eps=1e-5)
        else:
            raise ValueError(f"unknown attention norm {norm!r}; choose 'batchnorm' or 'layernorm'")
        self.token_mixer = MHSA(dim)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))
        self.layer_scale_2 = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.convffn(x)


class FusedAttentionBlock(nn.Module):
    """Inference form: ``x + token_mixer(norm(x))``, then ``x + convffn(x)``.

    ``norm`` is Identity once a BatchNorm was folded into ``token_mixer.qkv``; a LayerNorm2d stays.
    """

    def __init__(self, norm: nn.Module, token_mixer: MHSA, convffn: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.token_mixer = token_mixer
        self.convffn = convffn

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token_mixer(self.norm(x))
        return x + self.convffn(x)

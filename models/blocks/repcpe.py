"""Reparameterizable conditional positional encoding (Apple ``RepCPE``): ``x + pe(x)``, ``pe`` depthwise 7x7.

Inference form ``FusedRepCPE``: one depthwise conv ``reparam_conv`` (Apple key ``network.N.reparam_conv``).
"""

from __future__ import annotations

from torch import Tensor, nn


class RepCPE(nn.Module):
    def __init__(self, dim: int, spatial_shape: tuple[int, int] = (7, 7)) -> None:
        super().__init__()
        kh, kw = spatial_shape
        self.pe = nn.Conv2d(
            dim, dim, spatial_shape, stride=1, padding=(kh // 2, kw // 2), groups=dim, bias=True
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe(x)


class FusedRepCPE(nn.Module):
    def __init__(self, reparam_conv: nn.Conv2d) -> None:
        super().__init__()
        self.reparam_conv = reparam_conv

    def forward(self, x: Tensor) -> Tensor:
        return self.reparam_conv(x)

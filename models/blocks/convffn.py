"""Convolutional FFN of FastViT/MCi blocks (Apple ``ConvFFN``; timm ``ConvMlp``).

``conv`` (depthwise k×k without bias, then BN) -> ``fc1`` 1x1 -> GELU -> ``fc2`` 1x1. The reference's own
reparameterization leaves the BN; our rule folds it into the depthwise conv (``FusedConvFFN``).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from mobileclip_export.models.blocks.mobileone import KernelSize, conv_bn, same_padding


class ConvFFN(nn.Module):
    def __init__(self, channels: int, hidden_channels: int, kernel_size: KernelSize = 7) -> None:
        super().__init__()
        self.conv = conv_bn(channels, channels, kernel_size, 1, same_padding(kernel_size), channels)
        self.fc1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class FusedConvFFN(nn.Module):
    """Inference form: BN folded into ``conv.conv`` (which gains a bias); same ``fc1``/``fc2`` keys."""

    def __init__(self, conv: nn.Conv2d, fc1: nn.Conv2d, fc2: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Sequential(OrderedDict(conv=conv))
        self.fc1 = fc1
        self.act = nn.GELU()
        self.fc2 = fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))

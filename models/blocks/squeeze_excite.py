"""Squeeze-and-excitation gates used by MCi.

Two flavours with different key names, both kept so Apple checkpoints load 1:1:
- ``SEBlock`` (Apple ``mobileone.py``; ``reduce``/``expand``, rd 1/16) in ``conv_exp``;
- ``SqueezeExcite`` (timm ``SEModule``; ``fc1``/``fc2``, rd 0.25, rounded to a multiple of 8) in the
  large-kernel downsampling convs.
Both pool with a global mean over H, W (not ``avg_pool2d`` with a tensor kernel size, which traces badly).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """timm's rounding (round_limit=0): nearest multiple of ``divisor``, at least ``min_value``."""
    min_value = min_value or divisor
    return max(min_value, int(v + divisor / 2) // divisor * divisor)


class SEBlock(nn.Module):
    """Apple SEBlock: mean -> reduce (1x1) -> ReLU -> expand (1x1) -> sigmoid -> multiply."""

    def __init__(self, channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        rd = int(channels * rd_ratio)
        self.reduce = nn.Conv2d(channels, rd, kernel_size=1, bias=True)
        self.expand = nn.Conv2d(rd, channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


class SqueezeExcite(nn.Module):
    """timm SqueezeExcite/SEModule: mean -> fc1 (1x1) -> ReLU -> fc2 (1x1) -> sigmoid -> multiply."""

    def __init__(self, channels: int, rd_ratio: float = 0.25, rd_divisor: int = 8) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s

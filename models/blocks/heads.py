"""Projection heads of MCi.

- ``GlobalPool2D`` (MCi0-2, Apple ``image_encoder.py``): mean over H, W, then ``x @ proj``
  (``proj`` [C, D], no bias).
- ``LinearPoolHead`` (MCi3/4, timm ``ClassifierHead`` avg pool + fc with bias). Keys ``head.fc.weight/bias``
  (timm's own name), chosen so timm/open_clip MobileCLIP2 checkpoints map by prefix only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GlobalPool2D(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(in_dim, out_dim) * in_dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) @ self.proj


class LinearPoolHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))

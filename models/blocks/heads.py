"""Projection heads of MCi.

- ``GlobalPool2D`` (MCi0-2): mean over H, W, then ``x @ proj`` (``proj`` [C, D]). Apple's v1 head has no
  bias; the MobileCLIP2 towers (timm ``fastvit_mci0/2`` inside open_clip, ``timm_proj: null``) end in
  timm's classifier ``head.fc`` (a Linear WITH a trained bias), so ``bias=True`` adds ``bias`` [D].
- ``LinearPoolHead`` (MCi3/4, timm ``ClassifierHead`` avg pool + fc with bias). Keys ``head.fc.weight/bias``
  (timm's own name), chosen so timm/open_clip MobileCLIP2 checkpoints map by prefix only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GlobalPool2D(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(in_dim, out_dim) * in_dim**-0.5)
        # uniform(+-1/sqrt(in)) like nn.Linear, so a random-init biased head has a visible bias
        self.bias = nn.Parameter((torch.rand(out_dim) * 2 - 1) * in_dim**-0.5) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.mean(dim=(2, 3)) @ self.proj
        return y if self.bias is None else y + self.bias


class LinearPoolHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))

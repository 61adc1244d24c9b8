"""RepMixer token mixer and the RepMixerBlock (image k=3; MCt text uses kernel (1, 11) on [B, D, 1, L]).

Train-time (Apple names): ``RepMixer``: ``x + layer_scale * (mixer(x) - norm(x))`` with ``norm`` a BN-only
MobileOneBlock and ``mixer`` a depthwise MobileOneBlock (no activation). ``RepMixerBlock``:
``x = token_mixer(x); x = x + layer_scale * convffn(x)``. Inference forms come from ``reparam/rules.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobileclip_export.models.blocks.convffn import ConvFFN
from mobileclip_export.models.blocks.mobileone import KernelSize, MobileOneBlock


class RepMixer(nn.Module):
    def __init__(self, dim: int, kernel_size: KernelSize = 3, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.norm = MobileOneBlock(
            dim, dim, kernel_size, groups=dim, use_act=False, use_scale_branch=False, num_conv_branches=0
        )
        self.mixer = MobileOneBlock(dim, dim, kernel_size, groups=dim, use_act=False)
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class FusedRepMixer(nn.Module):
    """Inference form: one depthwise conv with bias (``token_mixer.reparam_conv``)."""

    def __init__(self, reparam_conv: nn.Conv2d) -> None:
        super().__init__()
        self.reparam_conv = reparam_conv

    def forward(self, x: Tensor) -> Tensor:
        return self.reparam_conv(x)


class RepMixerBlock(nn.Module):
    """Args:
    kernel_size: token-mixer kernel (3 for images, (1, 11) for MCt text).
    ffn_kernel_size: ConvFFN depthwise kernel (7 for images, (1, 11) for MCt text).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: KernelSize = 3,
        mlp_ratio: float = 3.0,
        ffn_kernel_size: KernelSize = 7,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), ffn_kernel_size)
        self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class FusedRepMixerBlock(nn.Module):
    """Inference form: ``x = token_mixer(x); x + convffn(x)`` (layer scale folded into ``convffn.fc2``)."""

    def __init__(self, token_mixer: nn.Module, convffn: nn.Module) -> None:
        super().__init__()
        self.token_mixer = token_mixer
        self.convffn = convffn

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.convffn(x)

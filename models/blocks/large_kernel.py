"""Large-kernel depthwise conv with a small-kernel branch, and the PatchEmbed downsampler built on it.

``ReparamLargeKernelConv`` (Apple names): ``lkb_origin`` (conv k×k + BN) + ``small_conv`` (conv 3x3 + BN),
same stride and groups, then ``se`` (timm SqueezeExcite, keys ``se.fc1``/``se.fc2``) and GELU.
Inference form: ``lkb_reparam`` (Apple ``inference_mode=True`` key).
``PatchEmbed``: ``proj = Sequential(ReparamLargeKernelConv, MobileOneBlock 1x1)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mobileclip_export.models.blocks.mobileone import MobileOneBlock, conv_bn
from mobileclip_export.models.blocks.squeeze_excite import SqueezeExcite


class ReparamLargeKernelConv(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int,
        small_kernel: int | None = 3,
        *,
        use_se: bool = False,
        use_act: bool = True,
    ) -> None:
        super().__init__()
        self.lkb_origin = conv_bn(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups)
        self.small_conv = (
            conv_bn(in_channels, out_channels, small_kernel, stride, small_kernel // 2, groups)
            if small_kernel
            else None
        )
        self.se: nn.Module = SqueezeExcite(out_channels, rd_ratio=0.25) if use_se else nn.Identity()
        self.activation: nn.Module = nn.GELU() if use_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.lkb_origin(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return self.activation(self.se(out))


class FusedLargeKernelConv(nn.Module):
    """Inference form: ``activation(se(lkb_reparam(x)))``."""

    def __init__(self, lkb_reparam: nn.Conv2d, se: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.lkb_reparam = lkb_reparam
        self.se = se
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.se(self.lkb_reparam(x)))


class PatchEmbed(nn.Module):
    """Stride-2 downsampler between stages: depthwise 7x7 (channel multiplier out/in) then a 1x1 MobileOne."""

    def __init__(
        self, in_channels: int, embed_dim: int, patch_size: int = 7, stride: int = 2, *, use_se: bool = False
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(
                in_channels, embed_dim, patch_size, stride, groups=in_channels, small_kernel=3, use_se=use_se
            ),
            MobileOneBlock(embed_dim, embed_dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

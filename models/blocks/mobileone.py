"""MobileOne block: train-time multi-branch conv and its single-conv inference form.

Train-time attribute names follow Apple's ``mobileone.py`` so checkpoint keys map 1:1:
``rbr_skip`` (BN), ``rbr_conv`` (ModuleList of Sequential(conv, bn)), ``rbr_scale`` (Sequential(conv, bn)),
``se``, ``activation``. Output: ``activation(se(skip(x) + scale(x) + sum(conv_i(x))))``.
The fusion rule (``reparam/rules.py``) turns it into ``FusedMobileOneBlock`` with one ``reparam_conv``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from mobileclip_export.models.blocks.squeeze_excite import SEBlock

KernelSize = int | tuple[int, int]


def pair(k: KernelSize) -> tuple[int, int]:
    if isinstance(k, int):
        return (k, k)
    kh, kw = k
    return (int(kh), int(kw))


def same_padding(k: KernelSize) -> tuple[int, int]:
    kh, kw = pair(k)
    return (kh // 2, kw // 2)


def conv_bn(
    in_ch: int, out_ch: int, kernel_size: KernelSize, stride: int, padding: KernelSize, groups: int
) -> nn.Sequential:
    """Sequential(conv without bias, bn): the unit every branch is built from (keys ``conv.*``, ``bn.*``)."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(
                in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
            ),
            bn=nn.BatchNorm2d(out_ch),
        )
    )


class MobileOneBlock(nn.Module):
    """Train-time MobileOne block.

    Args:
        kernel_size: int or (kh, kw); padding is always ``k // 2`` per axis.
        use_scale_branch: add the 1x1 ``rbr_scale`` branch. As in the reference it only exists when
            ``kh > 1`` (so a (1, 11) text mixer kernel has no scale branch).
        num_conv_branches: number of k×k conv+BN branches (0 gives a BN-only block, as RepMixer's ``norm``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: KernelSize,
        stride: int = 1,
        groups: int = 1,
        *,
        use_se: bool = False,
        use_act: bool = True,
        use_scale_branch: bool = True,
        num_conv_branches: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = pair(kernel_size), stride, groups
        self.padding = same_padding(kernel_size)
        self.se: nn.Module = SEBlock(out_channels) if use_se else nn.Identity()
        self.activation: nn.Module = nn.GELU() if use_act else nn.Identity()
        self.rbr_skip = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_channels, out_channels, self.kernel_size, stride, self.padding, groups)
            for _ in range(num_conv_branches)
        )
        self.rbr_scale = (
            conv_bn(in_channels, out_channels, 1, stride, 0, groups)
            if use_scale_branch and self.kernel_size[0] > 1
            else None
        )
        if self.rbr_skip is None and self.rbr_scale is None and num_conv_branches == 0:
            raise ValueError("MobileOneBlock needs at least one branch")

    def forward(self, x: Tensor) -> Tensor:
        # Branch presence is structural (fixed at construction), so this traces to a static graph.
        branches = [conv(x) for conv in self.rbr_conv]
        if self.rbr_skip is not None:
            branches.append(self.rbr_skip(x))
        if self.rbr_scale is not None:
            branches.append(self.rbr_scale(x))
        out = branches[0]
        for b in branches[1:]:
            out = out + b
        return self.activation(self.se(out))


class FusedMobileOneBlock(nn.Module):
    """Inference form: ``activation(se(reparam_conv(x)))`` (Apple ``inference_mode=True`` key names)."""

    def __init__(self, reparam_conv: nn.Conv2d, se: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.reparam_conv = reparam_conv
        self.se = se
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.se(self.reparam_conv(x)))

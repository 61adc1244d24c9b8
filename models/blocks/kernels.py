"""Conv kernels shared by the blocks' two directions: reparameterization folds branches into one conv
(``mobileclip_export.reparam.fuse``), checkpoint lifting spreads one conv back over the branches
(``models.checkpoint.lift``). Both need the identity as a conv."""

from __future__ import annotations

import torch
from torch import Tensor


def identity_kernel(
    channels: int,
    groups: int,
    kernel_size: int | tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Kernel ``[C, C/groups, kh, kw]`` of a grouped conv that returns its input (odd kernel sizes)."""
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    kh, kw = int(ks[0]), int(ks[1])
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"identity kernel needs odd kernel sizes, got {(kh, kw)}")
    if channels % groups != 0:
        raise ValueError(f"channels={channels} not divisible by groups={groups}")
    per_group = channels // groups
    k = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    k[idx, idx % per_group, kh // 2, kw // 2] = 1.0
    return k

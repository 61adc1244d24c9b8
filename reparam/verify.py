"""Helpers to test reparameterization honestly.

Freshly built models have BN stats (0, 1), γ=1, β=0 and layer scales of 1e-5: a fusion bug is then invisible
(every branch is near identity, residual branches contribute ~nothing). ``randomize_bn_and_layer_scales``
makes every such term matter before parity is measured.
"""

from __future__ import annotations

import torch
from torch import nn

from mobileclip_export.errors import VerificationError
from mobileclip_export.reparam.registry import registered_rules


def _layer_scale_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("layer_scale")]


@torch.no_grad()
def randomize_bn_and_layer_scales(
    model: nn.Module, seed: int = 0, *, layer_scale_max: float = 0.5
) -> nn.Module:
    """In place: random BN running_mean/var, weight, bias; layer scales of random sign, magnitude uniform in
    [0.1, layer_scale_max]. Returns ``model``.

    Why 0.5 and not 1: residual growth compounds over a 24-block stage. With magnitudes up to 1, full MCi2
    activations reach ~1e4 and the *train-time* fp32 model alone is 6e-5 (relative) off its own fp64 value, so
    an fp32 parity check would measure rounding, not fusion. Exactness itself is checked in fp64 by the tests.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                m.running_mean.copy_(rand(m.running_mean.shape, -0.5, 0.5).to(m.running_mean))
                m.running_var.copy_(rand(m.running_var.shape, 0.5, 2.0).to(m.running_var))
            if m.weight is not None:
                m.weight.copy_(rand(m.weight.shape, 0.5, 1.5).to(m.weight))
                m.bias.copy_(rand(m.bias.shape, -0.3, 0.3).to(m.bias))
    for _, p in _layer_scale_params(model):
        sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
        p.copy_((sign * rand(p.shape, 0.1, layer_scale_max)).to(p))
    return model


def train_time_leftovers(model: nn.Module) -> list[str]:
    """Names of modules that are not in inference form: any BatchNorm, any module a reparam rule matches
    (multi-branch blocks, unfused ConvFFN/RepCPE/attention blocks), and any ``layer_scale*`` parameter left.
    Empty means the model is in single-branch inference form."""
    rules = registered_rules()
    out: list[str] = []
    for name, m in model.named_modules():
        label = name or "<root>"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append(f"{label} ({type(m).__name__})")
        elif type(m) in rules:
            out.append(f"{label} ({type(m).__name__}: has a reparameterization rule)")
    out.extend(f"{n} (unfolded layer scale)" for n, _ in _layer_scale_params(model))
    return out


def assert_inference_form(model: nn.Module) -> None:
    """Raise VerificationError listing every train-time leftover."""
    left = train_time_leftovers(model)
    if left:
        shown = ", ".join(left[:10]) + (f", ... ({len(left)} in all)" if len(left) > 10 else "")
        raise VerificationError(f"model is not in inference form; train-time leftovers: {shown}")

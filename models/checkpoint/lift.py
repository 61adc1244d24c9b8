"""Inference-form checkpoints (Apple/timm ``reparameterize_model`` output: ``reparam_conv``/``lkb_reparam``)
folded back exactly into the train-time model, so the caller keeps one model form and our own
reparameterization folds it again.

For each fused conv (W, b): every branch of the train-time module is zeroed (conv weights 0, BN γ=β=μ=0,
σ²=1) and one branch carries it: MobileOne / large kernel: ``conv = W`` with BN ``y + b``; RepMixer
``x + ls·(mixer(x) − norm(x))``: ``ls = 1``, ``norm = 0``, ``mixer = W − I``; RepCPE ``x + pe(x)``:
``pe = W − I``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mobileclip_export.models.blocks.kernels import identity_kernel

from .keymaps import Reparam, branch_keys, reparam_modules

# The train-time branch that carries the fused conv (RepCPE has no BN: its ``pe`` conv carries it).
_CARRIER = {"mobileone": ".rbr_conv.0", "large_kernel": ".lkb_origin", "repmixer": ".mixer.rbr_conv.0"}


def _bn_identity(sd: dict[str, Tensor], prefix: str, eps: float, bias: Tensor) -> None:
    """BN that computes ``x + bias`` exactly enough (γ = sqrt(1 + eps), μ = 0, σ² = 1)."""
    sd[prefix + ".weight"] = torch.full_like(sd[prefix + ".weight"], math.sqrt(1.0 + eps))
    sd[prefix + ".bias"] = bias.to(sd[prefix + ".bias"].dtype).clone()


def _lift_one(
    out: dict[str, Tensor], r: Reparam, branch: list[str], model: nn.Module, model_sd: dict[str, Tensor]
) -> None:
    """Replace ``r``'s fused conv in ``out`` by branch values of ``model`` that compute the same."""
    w, b = out.pop(r.fused + ".weight"), out.pop(r.fused + ".bias", None)
    if b is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype)
    for k in branch:  # zero every branch first
        ref = model_sd[k]
        out[k] = torch.ones_like(ref) if k.endswith("running_var") else torch.zeros_like(ref)
    if r.kind in ("repmixer", "repcpe"):  # these modules add their input back: the branch carries W - I
        groups = w.shape[0] // w.shape[1] if w.shape[1] else 1
        w = w - identity_kernel(w.shape[0], groups, tuple(w.shape[-2:]), dtype=w.dtype)
    if r.kind == "repcpe":
        out[r.prefix + ".pe.weight"], out[r.prefix + ".pe.bias"] = w, b
        return
    cp = r.prefix + _CARRIER[r.kind]
    out[cp + ".conv.weight"] = w.to(model_sd[cp + ".conv.weight"].dtype)
    _bn_identity(out, cp + ".bn", model.get_submodule(cp + ".bn").eps, b)
    if r.kind == "repmixer":
        out[r.prefix + ".layer_scale"] = torch.ones_like(model_sd[r.prefix + ".layer_scale"])


def lift_inference_form(canon: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], int]:
    """Replace Apple inference-form convs in ``canon`` by equivalent train-time branch values of ``model``.

    Returns the new dict and how many modules were lifted; a module whose branches ``canon`` already
    holds (train-time form) is left as it is.
    """
    model_sd = model.state_dict()
    shapes = {k: v.shape for k, v in model_sd.items()}
    out = dict(canon)
    lifted = 0
    for r in reparam_modules(shapes):
        branch = branch_keys(r, shapes)
        if r.fused + ".weight" not in out or any(k in out for k in branch):
            continue
        _lift_one(out, r, branch, model, model_sd)
        lifted += 1
    return out, lifted

"""Rule for the ViT-B/16 conv stem (``models/vit.py::ConvNormAct``).

Algebra: conv (W, b) followed by eval-mode BN (γ, β, μ, σ = sqrt(var + eps)) equals one conv with
W' = W · γ/σ (per output channel) and b' = β + (b − μ) · γ/σ (``fuse.fuse_conv_bn``). The activation
is kept. The result is a ``ConvNormAct`` without ``norm`` whose conv has a bias, so keys become
``block.conv.{weight,bias}`` and the rule returns such a module unchanged (idempotent).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from mobileclip_export.models.vit import ConvNormAct

from .fuse import conv_from, fuse_conv_bn
from .registry import register_rule


@register_rule(ConvNormAct)
def fuse_conv_norm_act(m: ConvNormAct) -> nn.Module:
    layers = m.block._modules
    norm = layers.get("norm")
    if not isinstance(norm, nn.BatchNorm2d):
        return m
    conv = layers["conv"]
    w, b = fuse_conv_bn(conv.weight, conv.bias, norm)
    new_layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv_from(conv, w, b))
    if "act" in layers:
        new_layers["act"] = copy.deepcopy(layers["act"])
    return ConvNormAct.from_layers(new_layers)

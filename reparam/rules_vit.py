"""Rule for the ViT-B/16 conv stem (``models/vit.py::ConvNormAct`` -> ``ConvAct``).

Algebra: conv (W, b) followed by eval-mode BN (γ, β, μ, σ = sqrt(var + eps)) equals one conv with
W' = W · γ/σ (per output channel) and b' = β + (b − μ) · γ/σ (``fuse.fuse_conv_bn``). The activation
is kept. Every ``ConvNormAct`` (also the norm-free last stem conv) becomes a ``ConvAct``, which has no
rule: the pass stays idempotent and no train-time stem type is left. Keys become ``block.conv.{weight,bias}``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from mobileclip_export.models.vit import ConvAct, ConvNormAct
from mobileclip_export.reparam.fuse import conv_from, fuse_conv_bn
from mobileclip_export.reparam.registry import register_rule


@register_rule(ConvNormAct)
def fuse_conv_norm_act(m: ConvNormAct) -> ConvAct:
    layers = m.block._modules
    conv, norm = layers["conv"], layers.get("norm")
    if isinstance(norm, nn.BatchNorm2d):
        w, b = fuse_conv_bn(conv.weight, conv.bias, norm)
        conv = conv_from(conv, w, b)
    else:
        conv = copy.deepcopy(conv)
    new_layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv)
    if "act" in layers:
        new_layers["act"] = copy.deepcopy(layers["act"])
    return ConvAct(new_layers)

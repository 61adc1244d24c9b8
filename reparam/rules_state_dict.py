"""Bring a state_dict saved in the *reference's* inference form into ours.

Apple's ``reparameterize_model`` (and ``inference_mode=True`` skeletons) fuse MobileOne / large-kernel /
RepMixer / RepCPE, which our rules reproduce under the same key names, but leave three things we fold further:

- ``P.convffn.conv.bn.*``            -> folded into ``P.convffn.conv.conv`` (weight, new bias)
- ``P.norm.*`` (BatchNorm, attention) -> folded into ``P.token_mixer.qkv`` (weight, new bias)
- ``P.layer_scale`` / ``P.layer_scale_2`` -> ``P.convffn.fc2``;  ``P.layer_scale_1`` -> ``P.token_mixer.proj``

Same algebra as the module rules (``reparam/fuse.py``), applied to tensors by key. The result loads with
``strict=True`` into ``reparameterize_model(train_time_model)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from mobileclip_export.reparam import fuse

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def _bn_from(sd: dict[str, Tensor], prefix: str, eps: float) -> nn.BatchNorm2d:
    w = sd[prefix + "weight"]
    bn = nn.BatchNorm2d(w.shape[0], eps=eps)
    for f in _BN_FIELDS:
        getattr(bn, f).data = sd.pop(prefix + f).detach().clone()
    sd.pop(prefix + "num_batches_tracked", None)
    return bn


def _scale_into(sd: dict[str, Tensor], layer: str, scale: Tensor) -> None:
    w, b = fuse.scale_output(sd[layer + ".weight"], sd.get(layer + ".bias"), scale)
    sd[layer + ".weight"] = w
    if b is not None:
        sd[layer + ".bias"] = b


def fold_reference_inference_state_dict(
    state_dict: Mapping[str, Tensor], *, bn_eps: float = 1e-5
) -> dict[str, Tensor]:
    """Return a new state_dict with the reference's leftover BN / layer scales folded (input untouched)."""
    sd = dict(state_dict)
    for key in [k for k in sd if k.endswith(".convffn.conv.bn.running_mean")]:
        p = key[: -len("bn.running_mean")]  # "...convffn.conv."
        bn = _bn_from(sd, p + "bn.", bn_eps)
        w, b = fuse.fuse_conv_bn(sd[p + "conv.weight"], sd.get(p + "conv.bias"), bn)
        sd[p + "conv.weight"], sd[p + "conv.bias"] = w, b
    for key in [k for k in sd if k.endswith(".token_mixer.qkv.weight")]:
        p = key[: -len("token_mixer.qkv.weight")]
        if p + "norm.running_mean" in sd:  # BatchNorm (a channel LayerNorm has no running stats and stays)
            scale, shift = fuse.bn_affine(_bn_from(sd, p + "norm.", bn_eps))
            w, b = fuse.fold_input_affine(sd[key], sd.get(p + "token_mixer.qkv.bias"), scale, shift)
            sd[key], sd[p + "token_mixer.qkv.bias"] = w, b
    for key in [k for k in sd if k.rsplit(".", 1)[-1] in ("layer_scale", "layer_scale_1", "layer_scale_2")]:
        p, leaf = key.rsplit(".", 1)
        target = f"{p}.token_mixer.proj" if leaf == "layer_scale_1" else f"{p}.convffn.fc2"
        if target + ".weight" not in sd:
            continue  # e.g. a RepMixer's own layer_scale in an unfused checkpoint: not ours to fold
        _scale_into(sd, target, sd.pop(key))
    return sd

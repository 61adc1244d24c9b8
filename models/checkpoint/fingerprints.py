"""Distinctive shapes of a state_dict in any format, so a checkpoint of another variant is named ("it looks
like a different variant: image mci2 (...) [= mobileclip_s2]") instead of listing hundreds of keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mobileclip_export.models.catalog import get_model_spec, list_models
from mobileclip_export.models.mci import mci_config, mci_names

from .detect import normalize
from .keymaps import IMAGE_PREFIX, OPEN_CLIP_IMAGE_PREFIX, OPEN_CLIP_TEXT_PREFIX, TEXT_PREFIX
from .read import Checkpoint

Fingerprint = dict[str, Any]
_FASTVIT_STEM = re.compile(
    r"(patch_embed|stem)\.0\.(rbr_conv\.0\.conv|conv_kxk\.0\.conv|reparam_conv)\.weight"
)


def _mci_guess(depths: tuple[int, ...], stem_channels: int) -> str:
    """The MCi variant(s) with these stage depths, else with this stem width ("mci0/mci1"), else "mci?"."""
    cfgs = {n: mci_config(n) for n in mci_names()}
    names = [n for n, c in cfgs.items() if c.layers == depths]
    names = names or [n for n, c in cfgs.items() if c.embed_dims[0] == stem_channels]
    return "/".join(names) or "mci?"


def _towers(sd: Mapping[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    sd = normalize(dict(sd), fmt)
    if fmt == "apple":
        ip, tp = IMAGE_PREFIX, TEXT_PREFIX
    elif fmt == "open_clip":
        ip, tp = OPEN_CLIP_IMAGE_PREFIX, OPEN_CLIP_TEXT_PREFIX
    else:
        return dict(sd), {}
    img = {k[len(ip) :]: v for k, v in sd.items() if k.startswith(ip)}
    txt = {k[len(tp) :]: v for k, v in sd.items() if k.startswith(tp)}
    return img, txt


def _trained_bias(b: Tensor | None) -> bool:
    """A head bias that changes the output: present and non-zero (a shape-only meta tensor counts)."""
    return b is not None and (b.is_meta or bool(b.numel() and b.abs().max() != 0))


def _fastvit(img: Mapping[str, Tensor], stem: Tensor) -> Fingerprint:
    depth: dict[int, set[int]] = {}
    for k in img:
        m = re.match(r"network\.(\d+)\.(\d+)\.", k) or re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            depth.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    fp: Fingerprint = {"image": "fastvit", "stem_channels": int(stem.shape[0])}
    fp["depths"] = tuple(len(depth[i]) for i in sorted(depth))
    if "head.proj" in img:
        fp["head"] = tuple(img["head.proj"].shape)
    elif "head.fc.weight" in img:
        fp["head"] = tuple(img["head.fc.weight"].shape[::-1])
    fp["head_bias"] = _trained_bias(img.get("head.bias", img.get("head.fc.bias")))
    fp["image_encoder"] = _mci_guess(fp["depths"], fp["stem_channels"])
    return fp


def _vit(img: Mapping[str, Tensor]) -> Fingerprint:
    if "patch_emb.0.block.conv.weight" in img or "patch_embed.backbone.0.conv.weight" in img:
        fp: Fingerprint = {"image": "vit_b16", "image_encoder": "vit_b16"}
        fp["depths"] = (
            len({m.group(2) for k in img if (m := re.match(r"(transformer|blocks)\.(\d+)\.", k))}),
        )
        if "cls_token" in img:
            fp["width"] = int(img["cls_token"].shape[-1])
        fp["head_bias"] = _trained_bias(img.get("classifier.bias", img.get("head.bias")))
        return fp
    if "patch_embed.proj.weight" in img:
        return {
            "image": "vit_l14",
            "image_encoder": "vit_l14",
            "width": int(img["patch_embed.proj.weight"].shape[0]),
            "depths": (len({m.group(1) for k in img if (m := re.match(r"blocks\.(\d+)\.", k))}),),
        }
    return {}


def _text(txt: Mapping[str, Tensor]) -> Fingerprint:
    emb = txt.get("embedding_layer.weight", txt.get("token_embedding.weight"))
    if emb is None:
        return {}
    layers = {m.group(1) for k in txt if (m := re.match(r"transformer\.(?:resblocks\.)?(\d+)\.", k))}
    mct = any(".token_mixer." in "." + k for k in txt)
    width = int(emb.shape[1])
    kind = "mct" if mct else f"base-{width}"
    return {"text_width": width, "text_layers": len(layers), "text_encoder": kind}


def fingerprint(sd: Mapping[str, Tensor], fmt: str) -> Fingerprint:
    """Distinctive shapes of a state_dict in any format: image family/width/depths/head, text width/layers."""
    img, txt = _towers(sd, fmt)
    stem = next((v for k, v in img.items() if _FASTVIT_STEM.fullmatch(k)), None)
    fp = _fastvit(img, stem) if stem is not None else _vit(img)
    return {**fp, **_text(txt)}


def _fp_text(fp: Fingerprint) -> str:
    parts = []
    if "image" in fp:
        s = f"image {fp['image_encoder']}"
        bias = " with bias" if fp.get("head_bias") else ""
        if fp["image"] == "fastvit":
            s += f" (stem {fp['stem_channels']} ch, blocks {'-'.join(map(str, fp['depths']))}"
            s += f", head {fp['head'][0]}->{fp['head'][1]}{bias})" if "head" in fp else ")"
        else:
            s += f" ({fp['depths'][0]} blocks" + (f", width {fp['width']}" if "width" in fp else "")
            s += f", head{bias})" if bias else ")"
        parts.append(s)
    if "text_width" in fp:
        parts.append(f"text {fp['text_encoder']} ({fp['text_layers']} layers x {fp['text_width']})")
    return " + ".join(parts) or "no recognizable tower"


def variant_names(fp: Fingerprint) -> list[str]:
    """The registered models a fingerprint fits (image encoder, text encoder and head bias agree)."""
    out = []
    for name in list_models():
        spec = get_model_spec(name)
        img_ok = (
            "image_encoder" not in fp
            or spec.image_encoder in fp["image_encoder"].split("/")
            or (fp["image_encoder"] == "vit_b16" and spec.image_encoder.startswith("vit_b"))
        )
        txt_ok = "text_encoder" not in fp or spec.text_encoder == fp["text_encoder"]
        # a trained head bias only fits a head that has one (a zero or absent one fits both)
        bias_ok = not fp.get("head_bias") or spec.image_head_bias
        if img_ok and txt_ok and bias_ok:
            out.append(name)
    return out


def fingerprint_pair(ck: Checkpoint, model: nn.Module) -> tuple[Fingerprint, Fingerprint]:
    """The checkpoint's and the model's fingerprints, comparable (a timm checkpoint has no text tower)."""
    fp_ck = fingerprint(ck.state_dict, ck.format)
    fp_model = fingerprint(model.state_dict(), "apple")
    if ck.format == "timm":
        fp_model = {k: v for k, v in fp_model.items() if not k.startswith("text")}
    return fp_ck, fp_model


def fingerprint_differs(ck: Checkpoint, model: nn.Module) -> bool:
    """True when the checkpoint's distinctive shapes say it is another variant than ``model``."""
    fp_ck, fp_model = fingerprint_pair(ck, model)
    return bool(fp_ck) and fp_ck != fp_model


def describe_mismatch(ck: Checkpoint, model: nn.Module) -> str:
    """ "it looks like a different variant: ... [= names]; the model is ... " when the fingerprints differ."""
    fp_ck, fp_model = fingerprint_pair(ck, model)
    if not fp_ck or fp_ck == fp_model:
        return ""
    names = variant_names(fp_ck)
    return (
        f"it looks like a different variant: {_fp_text(fp_ck)}"
        + (f" [= {', '.join(names)}]" if names else "")
        + f"; the model is {_fp_text(fp_model)}. "
    )

"""State-dict key mapping between our canonical (Apple v1 ``.pt``) names and the timm / open_clip names.

The map is derived from the model's OWN key list: each canonical key gets its foreign name by structure
(which flat ``network.{i}`` index is a PatchEmbed, a RepCPE or a stage of blocks), and loading inverts the
map. That keeps it exact for every variant, including 5-stage MCi3/MCi4 and inference-form keys.

Renames (facts from timm ``fastvit.checkpoint_filter_fn`` / ``vision_transformer_hybrid._convert_mobileclip``
and open_clip ``convert_mobile_clip_state_dict``):
- FastViT: ``patch_embed``->``stem``; ``network.{i}`` -> ``stages.{s}.blocks`` /
  ``stages.{s}.downsample.proj`` / ``stages.{s}.pos_emb.pos_enc`` (``pe``); ``rbr_conv``->``conv_kxk``,
  ``rbr_scale``->``conv_scale``, ``rbr_skip``->``identity``, ``lkb_origin``->``large_conv``,
  ``lkb_reparam``->``reparam_conv``,
  ``convffn``->``mlp``, ``conv_exp``->``final_conv`` (its ``se.reduce/expand``->``se.fc1/fc2``),
  ``layer_scale*``->``layer_scale*.gamma``, ``head.proj`` [C,D] -> ``head.fc.weight`` [D,C] + ``head.fc.bias``
  (``head.bias`` of a MobileCLIP2 head; a zero bias for Apple's bias-free v1 head).
- ViT-B/16: ``patch_emb.{j}.block.conv/norm`` -> ``patch_embed.backbone.{j}.conv/bn``, ``transformer.`` ->
  ``blocks.``, ``pre_norm_mha.0/1``->``norm1``/``attn`` (``qkv_proj``->``qkv``, ``out_proj``->``proj``),
  ``pre_norm_ffn.0/1/4``->``norm2``/``mlp.fc1``/``mlp.fc2``, ``post_transformer_norm``->``norm``,
  ``pos_embed.pos_embed.pos_embed`` [1,1,N,D] -> ``pos_embed`` [1,N,D], ``classifier.proj`` -> ``head.weight``
  (transposed) + ``head.bias`` (``classifier.bias`` of MobileCLIP2-B; zero for Apple's v1 head).
- ViT-L/14: our image keys already use timm's names.
- Text (open_clip, under ``text.``): ``embedding_layer``->``token_embedding``, positional [1,1,L,D] -> [L,D],
  ``transformer.{i}`` -> ``transformer.resblocks.{i}``, ``pre_norm_mha.0/1``->``ln_1``/``attn``
  (``qkv_proj.weight/bias``->``in_proj_weight/bias``), ``pre_norm_ffn.0/1/4``->``ln_2``/``mlp.c_fc``/
  ``mlp.c_proj``, ``final_layer_norm``->``ln_final``, ``projection_layer``->``text_projection``. MCt's
  RepMixer text blocks have no open_clip counterpart (open_clip#958); they keep their
  sub-names under ``resblocks``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mobileclip_export.errors import CheckpointError

IMAGE_PREFIX = "image_encoder.model."
TEXT_PREFIX = "text_encoder."
OPEN_CLIP_IMAGE_PREFIX = "visual.trunk."
OPEN_CLIP_TEXT_PREFIX = "text."
FORMATS = ("apple", "open_clip", "timm")

# Tensor transforms between canonical and foreign layouts.
SAME, TRANSPOSE, RESHAPE = "same", "transpose", "reshape"

_FASTVIT_SEGMENTS = {
    "rbr_conv": "conv_kxk",
    "rbr_scale": "conv_scale",
    "rbr_skip": "identity",
    "lkb_origin": "large_conv",
    "lkb_reparam": "reparam_conv",
    "convffn": "mlp",
}


class KeyMapError(ValueError):
    """Internal: the map would not be one-to-one (a bug in the rules, not in a user's checkpoint)."""


@dataclass(frozen=True)
class Entry:
    foreign: str
    transform: str = SAME
    zero_bias: str | None = None  # foreign key of a bias the canonical layout lacks (must be zero)


@dataclass
class KeyMap:
    """canonical key -> foreign key (+ tensor transform) for one format, built for one model."""

    fmt: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for canon, e in self.entries.items():
            for fk in (e.foreign, e.zero_bias):
                if fk is None:
                    continue
                if fk in seen:
                    raise KeyMapError(f"{self.fmt}: {canon!r} and {seen[fk]!r} both map to {fk!r}")
                seen[fk] = canon
        self._inverse = {e.foreign: c for c, e in self.entries.items()}
        self._zero_bias = {e.zero_bias: c for c, e in self.entries.items() if e.zero_bias}

    def to_foreign(self, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename/reshape a canonical state_dict; keys outside the map (e.g. text for timm) are dropped."""
        out: dict[str, Tensor] = {}
        for k, v in sd.items():
            e = self.entries.get(k)
            if e is None:
                continue
            if e.transform == TRANSPOSE:
                out[e.foreign] = v.t().contiguous()
                if e.zero_bias:
                    out[e.zero_bias] = torch.zeros(v.shape[1], dtype=v.dtype)
            elif e.transform == RESHAPE:
                out[e.foreign] = _foreign_reshape(k, v)
            else:
                out[e.foreign] = v
        return out

    def to_canonical(
        self, sd: Mapping[str, Tensor], shapes: Mapping[str, torch.Size]
    ) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """Return (canonical state_dict, foreign keys not in the map, problems with dropped zero biases)."""
        out: dict[str, Tensor] = {}
        unknown: list[str] = []
        problems: list[str] = []
        for k, v in sd.items():
            canon = self._inverse.get(k)
            if canon is not None:
                e = self.entries[canon]
                if e.transform == TRANSPOSE and v.dim() == 2:
                    v = v.t().contiguous()
                elif e.transform == RESHAPE and canon in shapes and v.numel() == shapes[canon].numel():
                    v = v.reshape(shapes[canon])
                out[canon] = v
            elif k in self._zero_bias:
                if v.numel() and float(v.abs().max()) != 0.0:
                    problems.append(
                        f"{k} is non-zero (max |b| = {float(v.abs().max()):.3g}) but {self._zero_bias[k]} "
                        "has no bias: a trained head bias is a MobileCLIP2-style head, this variant's "
                        "(Apple v1) head has none"
                    )
            else:
                unknown.append(k)
        return out, unknown, problems


def _foreign_reshape(canon: str, v: Tensor) -> Tensor:
    if canon.startswith(TEXT_PREFIX):
        return v.reshape(v.shape[-2], v.shape[-1])  # open_clip positional_embedding is [L, D]
    return v.reshape(1, v.shape[-2], v.shape[-1])  # timm ViT pos_embed is [1, N, D]


# ---------------------------------------------------------------------------------------------- image


def image_family(keys: Iterable[str]) -> str | None:
    """``fastvit`` | ``vit_b`` (cvnets names) | ``timm_vit`` (ViT-L, timm names) | None, from our keys."""
    ks = [k[len(IMAGE_PREFIX) :] for k in keys if k.startswith(IMAGE_PREFIX)]
    if any(k.startswith(("patch_embed.0.", "network.", "conv_exp.")) for k in ks):
        return "fastvit"
    if any(k.startswith("patch_emb.") for k in ks):
        return "vit_b"
    if ks:
        return "timm_vit"
    return None


def _fastvit_stages(keys: Iterable[str]) -> tuple[dict[int, int], set[int]]:
    """Map each flat ``network.{i}`` to its timm stage; also return the PatchEmbed indices.

    A PatchEmbed (``network.{i}.proj``) opens the next stage; a RepCPE and the blocks after it belong to it.
    """
    idx: set[int] = set()
    downs: set[int] = set()
    for k in keys:
        m = re.match(r"network\.(\d+)\.(proj\.)?", k)
        if m:
            idx.add(int(m.group(1)))
            if m.group(2):
                downs.add(int(m.group(1)))
    ends = sorted(downs)
    return {i: bisect.bisect_right(ends, i) for i in idx}, downs


def _rename_segments(rest: str) -> str:
    parts = rest.split(".")
    parts = [_FASTVIT_SEGMENTS.get(p, p) for p in parts]
    if parts and re.fullmatch(r"layer_scale(_\d)?", parts[-1]):
        parts.append("gamma")
    return ".".join(parts)


def _fastvit_entry(k: str, stage_of: dict[int, int], downs: set[int], head_bias: bool) -> Entry:
    if k == "head.proj":
        return Entry("head.fc.weight", TRANSPOSE, zero_bias=None if head_bias else "head.fc.bias")
    if k == "head.bias":  # GlobalPool2D of a MobileCLIP2 tower: timm's head.fc bias
        return Entry("head.fc.bias")
    if k.startswith("head."):
        return Entry(k)  # MCi3/MCi4 LinearPoolHead already uses timm's head.fc
    if k.startswith("patch_embed."):
        return Entry("stem." + _rename_segments(k[len("patch_embed.") :]))
    if k.startswith("conv_exp."):
        rest = k[len("conv_exp.") :].replace("se.reduce.", "se.fc1.").replace("se.expand.", "se.fc2.")
        return Entry("final_conv." + _rename_segments(rest))
    m = re.match(r"network\.(\d+)\.(.*)", k)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        s = stage_of[i]
        if i in downs:
            return Entry(f"stages.{s}.downsample.{_rename_segments(rest)}")
        if rest.startswith("pe."):
            return Entry(f"stages.{s}.pos_emb.pos_enc.{rest[3:]}")
        if rest.startswith("reparam_conv."):  # RepCPE in inference form
            return Entry(f"stages.{s}.pos_emb.{rest}")
        return Entry(f"stages.{s}.blocks.{_rename_segments(rest)}")
    return Entry(_rename_segments(k))


_VIT_B_REPLACEMENTS = (
    ("patch_emb.", "patch_embed.backbone."),
    ("block.conv", "conv"),
    ("block.norm", "bn"),
    ("post_transformer_norm.", "norm."),
    ("pre_norm_mha.0", "norm1"),
    ("pre_norm_mha.1", "attn"),
    ("pre_norm_ffn.0", "norm2"),
    ("pre_norm_ffn.1", "mlp.fc1"),
    ("pre_norm_ffn.4", "mlp.fc2"),
    ("qkv_proj.", "qkv."),
    ("out_proj.", "proj."),
    ("transformer.", "blocks."),
)


def _vit_b_entry(k: str, head_bias: bool) -> Entry:
    if k == "classifier.proj":
        return Entry("head.weight", TRANSPOSE, zero_bias=None if head_bias else "head.bias")
    if k == "classifier.bias":
        return Entry("head.bias")
    if k == "pos_embed.pos_embed.pos_embed":
        return Entry("pos_embed", RESHAPE)
    for a, b in _VIT_B_REPLACEMENTS:
        k = k.replace(a, b)
    return Entry(k)


def image_entries(keys: Iterable[str]) -> dict[str, Entry]:
    """canonical image key (with ``image_encoder.model.``) -> timm-name Entry (without prefix)."""
    keys = list(keys)
    fam = image_family(keys)
    img = [k[len(IMAGE_PREFIX) :] for k in keys if k.startswith(IMAGE_PREFIX)]
    if fam == "fastvit":
        stage_of, downs = _fastvit_stages(img)
        bias = "head.bias" in img
        return {IMAGE_PREFIX + k: _fastvit_entry(k, stage_of, downs, bias) for k in img}
    if fam == "vit_b":
        return {IMAGE_PREFIX + k: _vit_b_entry(k, "classifier.bias" in img) for k in img}
    return {IMAGE_PREFIX + k: Entry(k) for k in img}


# Canonical (weight, bias) names of the image projection head, per head class: GlobalPool2D, LinearPoolHead,
# the cvnets ViT classifier, timm's ViT-L Linear.
_IMAGE_HEADS = (
    ("head.proj", "head.bias"),
    ("head.fc.weight", "head.fc.bias"),
    ("classifier.proj", "classifier.bias"),
    ("head.weight", "head.bias"),
)


def image_head_keys(keys: Iterable[str]) -> tuple[str, str | None] | None:
    """Canonical ``(weight, bias)`` keys of the image projection head (bias None: a bias-free head)."""
    keys = set(keys)
    for w, b in _IMAGE_HEADS:
        if IMAGE_PREFIX + w in keys:
            return IMAGE_PREFIX + w, (IMAGE_PREFIX + b if IMAGE_PREFIX + b in keys else None)
    return None


# ----------------------------------------------------------------------------------------------- text

_TEXT_REPLACEMENTS = (
    ("pre_norm_mha.0.", "ln_1."),
    ("pre_norm_mha.1.qkv_proj.weight", "attn.in_proj_weight"),
    ("pre_norm_mha.1.qkv_proj.bias", "attn.in_proj_bias"),
    ("pre_norm_mha.1.", "attn."),
    ("pre_norm_ffn.0.", "ln_2."),
    ("pre_norm_ffn.1.", "mlp.c_fc."),
    ("pre_norm_ffn.4.", "mlp.c_proj."),
)


def _text_entry(k: str) -> Entry:
    if k == "positional_embedding.pos_embed.pos_embed":
        return Entry("positional_embedding", RESHAPE)
    if k == "projection_layer":
        return Entry("text_projection")
    if k.startswith("embedding_layer."):
        return Entry("token_embedding." + k[len("embedding_layer.") :])
    if k.startswith("final_layer_norm."):
        return Entry("ln_final." + k[len("final_layer_norm.") :])
    m = re.match(r"transformer\.(\d+)\.(.*)", k)
    if m:
        rest = m.group(2)
        for a, b in _TEXT_REPLACEMENTS:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
                break
        return Entry(f"transformer.resblocks.{m.group(1)}.{rest}")
    return Entry(k)


def text_entries(keys: Iterable[str]) -> dict[str, Entry]:
    return {k: _text_entry(k[len(TEXT_PREFIX) :]) for k in keys if k.startswith(TEXT_PREFIX)}


# ------------------------------------------------------------------------------------------- the maps


def _prefixed(entries: dict[str, Entry], prefix: str) -> dict[str, Entry]:
    return {
        c: Entry(prefix + e.foreign, e.transform, prefix + e.zero_bias if e.zero_bias else None)
        for c, e in entries.items()
    }


def build_keymap(keys: Iterable[str], fmt: str) -> KeyMap:
    """The map for ``fmt`` over the canonical ``keys`` of one model (train-time and/or inference form)."""
    keys = list(keys)
    if fmt == "apple":
        return KeyMap(fmt, {k: Entry(k) for k in keys})
    if fmt == "timm":
        return KeyMap(fmt, image_entries(keys))
    if fmt == "open_clip":
        entries = _prefixed(image_entries(keys), OPEN_CLIP_IMAGE_PREFIX)
        entries.update(_prefixed(text_entries(keys), OPEN_CLIP_TEXT_PREFIX))
        entries.update({k: Entry(k) for k in keys if k == "logit_scale"})
        return KeyMap(fmt, entries)
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of: {', '.join(FORMATS)}")


# ------------------------------------------------------------------- Apple's inference-form key names

# Train-time module signatures (by key) and the single conv Apple's `reparameterize_model` leaves.
_REPMIXER = re.compile(r"^(.*\.token_mixer)\.mixer\.rbr_conv\.0\.conv\.weight$")
_MOBILEONE = re.compile(r"^(.*?)\.rbr_conv\.0\.conv\.weight$")
_LARGE_KERNEL = re.compile(r"^(.*)\.lkb_origin\.conv\.weight$")
_REPCPE = re.compile(r"^(.*\.network\.\d+)\.pe\.weight$")


@dataclass(frozen=True)
class Reparam:
    """One reparameterizable module: its prefix, kind, inference-form conv name and the weight shape."""

    prefix: str
    kind: str  # "mobileone" | "repmixer" | "large_kernel" | "repcpe"
    fused: str  # e.g. "<prefix>.reparam_conv"
    weight_shape: torch.Size


def reparam_modules(shapes: Mapping[str, torch.Size]) -> list[Reparam]:
    """The train-time multi-branch modules of a canonical state_dict (outermost first, no nesting)."""
    found: list[Reparam] = []
    mixers = set()
    for k, shp in shapes.items():
        m = _REPMIXER.match(k)
        if m:
            mixers.add(m.group(1))
            found.append(Reparam(m.group(1), "repmixer", m.group(1) + ".reparam_conv", shp))
    for k, shp in shapes.items():
        if _REPMIXER.match(k):
            continue
        if (m := _MOBILEONE.match(k)) and not any(m.group(1).startswith(p + ".") for p in mixers):
            found.append(Reparam(m.group(1), "mobileone", m.group(1) + ".reparam_conv", shp))
        elif m := _LARGE_KERNEL.match(k):
            found.append(Reparam(m.group(1), "large_kernel", m.group(1) + ".lkb_reparam", shp))
        elif m := _REPCPE.match(k):
            found.append(Reparam(m.group(1), "repcpe", m.group(1) + ".reparam_conv", shp))
    return found


def branch_keys(r: Reparam, keys: Iterable[str]) -> list[str]:
    """The keys of ``r``'s train-time branches (what its one inference-form conv replaces)."""
    subs = {
        "mobileone": ("rbr_conv.", "rbr_scale.", "rbr_skip."),
        "repmixer": ("mixer.", "norm.", "layer_scale"),
        "large_kernel": ("lkb_origin.", "small_conv."),
        "repcpe": ("pe.",),
    }[r.kind]
    return [k for k in keys if any(k.startswith(f"{r.prefix}.{s}") for s in subs)]


def apple_inference_shapes(shapes: Mapping[str, torch.Size]) -> dict[str, torch.Size]:
    """Key shapes of the model after Apple's ``reparameterize_model`` (branches -> one conv with bias).

    Apple's pass leaves ConvFFN BatchNorms, the attention norm, layer scales and SE as they are, so these
    are the names Apple / timm inference-form checkpoints carry.
    """
    out = dict(shapes)
    for r in reparam_modules(shapes):
        for k in branch_keys(r, shapes):
            out.pop(k, None)
        out[r.fused + ".weight"] = r.weight_shape
        out[r.fused + ".bias"] = torch.Size([r.weight_shape[0]])
    return out


def keymap_for(model: nn.Module, fmt: str) -> KeyMap:
    """The ``fmt`` map of ``model``'s keys, plus its Apple/timm inference-form names (so a reparameterized
    checkpoint maps too, and can then be lifted)."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return build_keymap(list(apple_inference_shapes(shapes)) + list(shapes), fmt)


def export_state_dict(model: nn.Module, fmt: str) -> dict[str, Tensor]:
    """``model``'s state_dict under ``fmt``'s names (``timm``: image tower only)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return build_keymap(model.state_dict().keys(), fmt).to_foreign(model.state_dict())

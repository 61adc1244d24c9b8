"""Safe checkpoint loading: read (weights only), detect the format, map keys, validate, load.

Checkpoints are untrusted: ``.pt/.pth/.bin/.ckpt`` go through ``torch.load(weights_only=True)`` only, which
refuses any pickle that would import or call something (nothing is executed); ``.safetensors`` cannot
carry code at all. Formats: Apple v1 ``.pt`` (our canonical names), open_clip (``visual.trunk.*`` +
``text.*``, optionally under ``module.``), timm image towers. Key names are mapped by ``keymaps``.

Inference-form checkpoints (Apple/timm ``reparameterize_model`` output: ``reparam_conv``/``lkb_reparam``)
are *lifted* exactly into the train-time model: the fused conv becomes the single live branch (BN as an
exact identity plus the bias, other branches zeroed, ``W - I`` where the module adds its input back), so
the caller keeps one model form and our own reparameterization folds it back. A checkpoint saved from
this project's fully fused model (``reparameterize_model(model).state_dict()``) is loaded into a model of
that form: ``load_model_checkpoint`` handles that case, see ``needs_inference_form``.

Image head bias: MobileCLIP2 heads (timm's classifier Linear) carry a trained bias, Apple's v1 heads have
none. A bias-free head checkpoint loaded into a head with a bias gets a zero bias
(``LoadReport.zero_filled``); a non-zero bias offered to a bias-free head is refused, naming the variants it
fits.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mobileclip_export.errors import CheckpointError
from mobileclip_export.hashing import file_sha256
from mobileclip_export.models import keymaps
from mobileclip_export.models.keymaps import FORMATS, IMAGE_PREFIX, TEXT_PREFIX, build_keymap
from mobileclip_export.models.mci import mci_config, mci_names

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "weights")
# Train-time branches / fused convs; for the ViT-B conv stem (no multi-branch module), its BatchNorm and the
# conv bias our stem fold adds (Apple and timm names).
_TRAIN_BRANCH = re.compile(
    r"\.(rbr_conv|rbr_scale|rbr_skip|conv_kxk|conv_scale|identity|lkb_origin|large_conv)\."
    r"|\.patch_emb\.0\.block\.norm\.|\.patch_embed\.backbone\.0\.bn\."
)
_FUSED = re.compile(
    r"\.(reparam_conv|lkb_reparam)\.|\.patch_emb\.0\.block\.conv\.bias$|\.patch_embed\.backbone\.0\.conv\.bias$"
)
_OPEN_CLIP_TOP_TEXT = (
    "token_embedding.",
    "positional_embedding",
    "transformer.resblocks.",
    "ln_final.",
    "text_projection",
)


@dataclass
class LoadReport:
    format: str
    reparameterized: bool
    sha256: str
    n_tensors: int
    path: str = ""
    loaded: str = "image+text"  # "image+text" | "image only (text encoder stays random)"
    lifted_modules: int = 0  # inference-form modules lifted into train-time branches
    zero_filled: list[str] = field(default_factory=list)  # model keys the checkpoint lacked, set to zero
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = f", {self.lifted_modules} fused modules lifted" if self.lifted_modules else ""
        extra += f", zero-filled {', '.join(self.zero_filled)}" if self.zero_filled else ""
        return (
            f"{self.format} checkpoint, {self.n_tensors} tensors, {self.loaded}, "
            f"reparameterized={self.reparameterized}{extra}, sha256={self.sha256[:12]}"
        )


@dataclass
class Checkpoint:
    """A checkpoint read from disk and normalized (``module.`` stripped, containers unwrapped)."""

    state_dict: dict[str, Tensor]
    format: str
    reparameterized: bool
    sha256: str
    path: Path


# ------------------------------------------------------------------------------------------- reading


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2 (torch legacy format and plain pickles)
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return "other"


def _describe_head(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(64)
    try:
        text = head.decode("utf-8")
        return f"text starting {text[:40]!r}"
    except UnicodeDecodeError:
        return f"binary data starting {head[:8].hex()}"


def _torch_load(path: Path) -> object:
    kind = _sniff(path)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as err:  # zip magic but no central directory: cut short
            raise CheckpointError(f"{path} is truncated or corrupt (zip: {err}): re-download it") from None
        if not any(n.endswith("data.pkl") for n in names):
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            raise CheckpointError(
                f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl; holds {shown})"
            )
    elif kind != "pickle":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_describe_head(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            glob = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+(\S+)", msg)
            what = f" (it would import {glob.group(1).strip('`,.')})" if glob else ""
            raise CheckpointError(
                f"refused unsafe pickle: {path} is not a plain tensor checkpoint{what}; nothing was "
                "executed. Only tensors/containers load (torch.load weights_only=True); re-save the "
                "state_dict or use .safetensors"
            ) from None
        if "truncated" in msg or "ran out of input" in msg.lower():
            raise CheckpointError(f"{path} is truncated (pickle data ends early): re-download it") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {msg.splitlines()[0]}") from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(err).__name__}): re-download it"
        ) from None
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        if "zip archive" in first or "central directory" in first or "file_size" in first:
            raise CheckpointError(f"{path} is truncated or corrupt ({first}): re-download it") from None
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {first}") from None


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupt: {err})"
        ) from None


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of name -> tensor)"
        )
    if not obj:
        raise CheckpointError(f"{path} holds an empty state_dict")
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        shown = ", ".join(f"{k!r}: {t}" for k, t in bad[:3])
        raise CheckpointError(
            f"{path} is not a tensor state_dict: {len(bad)} of {len(obj)} values are not tensors ({shown}"
            f"{' ...' if len(bad) > 3 else ''}); containers tried: {', '.join(_CONTAINER_KEYS)}"
        )
    return {str(k): v for k, v in obj.items()}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read ``path`` as a flat ``{name: tensor}`` dict, safely (weights only); raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or (suffix not in TORCH_SUFFIXES and _sniff(path) == "safetensors"):
        return _unwrap(_safetensors_load(path), path)
    return _unwrap(_torch_load(path), path)


# ------------------------------------------------------------------------------------------ detection


def _strip_module(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _normalize(sd: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """DDP ``module.`` stripped; open_clip's plain-CLIP layout (text at top level) moved under ``text.``."""
    sd = _strip_module(sd)
    if fmt == "open_clip":
        sd = {("text." + k if k.startswith(_OPEN_CLIP_TOP_TEXT) else k): v for k, v in sd.items()}
    return sd


def detect_format(sd: Mapping[str, Tensor]) -> str:
    """``apple`` | ``open_clip`` | ``timm`` from the key names; raises CheckpointError for anything else."""
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in sd]
    if any(k.startswith((IMAGE_PREFIX, TEXT_PREFIX, "image_encoder.")) for k in keys):
        return "apple"
    if any(k.startswith(("visual.", "text.")) or k.startswith(_OPEN_CLIP_TOP_TEXT) for k in keys):
        return "open_clip"
    if any(k.startswith(("stem.", "stages.", "final_conv.", "patch_embed.", "blocks.")) for k in keys):
        return "timm"
    shown = ", ".join(list(keys)[:4])
    raise CheckpointError(
        f"not a MobileCLIP checkpoint: keys ({shown}, ...) match none of the formats {', '.join(FORMATS)} "
        "(apple: image_encoder.model.*/text_encoder.*; open_clip: visual.trunk.*/text.*; "
        "timm: stem.*/stages.* or patch_embed.*/blocks.*)"
    )


def needs_inference_form(sd: Mapping[str, Tensor]) -> bool:
    """True if ``sd`` is already reparameterized: fused convs present, no train-time branch left.

    Apple/timm inference-form checkpoints still load into the train-time model (they are lifted); only a
    checkpoint of this project's fully fused model needs ``reparameterize_model(model)`` first, which
    ``load_model_checkpoint`` does on its own.
    """
    keys = ["." + k for k in sd]
    return any(_FUSED.search(k) for k in keys) and not any(_TRAIN_BRANCH.search(k) for k in keys)


def check_checkpoint_format(path: str | Path) -> None:
    """Cheap pre-flight before a model is built (reads 16 bytes): the file is in a format we can read."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist, is not a file, or is empty")
    if _sniff(path) == "other":
        raise CheckpointError(
            f"{path} is not a checkpoint (PyTorch zip/pickle or safetensors): {_describe_head(path)}"
        )


def _check_finite(sd: Mapping[str, Tensor], path: Path) -> None:
    """NaN/inf weights are named at load, not found later as a parity 'cosine nan'."""
    bad = {}
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad[k] = int((~torch.isfinite(v)).sum())
    if bad:
        shown = ", ".join(f"{k} ({n} of {sd[k].numel()})" for k, n in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(f"{path} has NaN/inf values in {len(bad)} tensor(s): {shown}{more}")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read, hash, detect and normalize a checkpoint (no model needed)."""
    path = Path(path)
    raw = load_state_dict_file(path)
    _check_finite(raw, path)
    fmt = detect_format(raw)
    sd = _normalize(raw, fmt)
    return Checkpoint(sd, fmt, needs_inference_form(sd), file_sha256(path), path)


# ------------------------------------------------------------------------------------------- mapping


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _keymap_for(model: nn.Module, fmt: str) -> keymaps.KeyMap:
    shapes = _shapes(model)
    # Apple/timm inference-form names too, so a reparameterized checkpoint maps (and is lifted) as well.
    return build_keymap(list(keymaps.apple_inference_shapes(shapes)) + list(shapes), fmt)


def export_state_dict(model: nn.Module, fmt: str) -> dict[str, Tensor]:
    """``model``'s state_dict under ``fmt``'s names (``timm``: image tower only)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return build_keymap(model.state_dict().keys(), fmt).to_foreign(model.state_dict())


def convert_to_canonical(sd: Mapping[str, Tensor], fmt: str, model: nn.Module) -> dict[str, Tensor]:
    """Rename a ``fmt`` state_dict to our canonical keys; foreign keys outside the map are kept as they are
    (so the caller's key comparison reports them as unexpected)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    normalized = _normalize(dict(sd), fmt)
    canon, unknown, problems = _keymap_for(model, fmt).to_canonical(normalized, _shapes(model))
    if problems:
        raise CheckpointError("; ".join(problems))
    for k in unknown:
        canon.setdefault(k, normalized[k])
    return canon


# --------------------------------------------------------------------------------------------- lifting


def _bn_identity(sd: dict[str, Tensor], prefix: str, eps: float, bias: Tensor) -> None:
    """BN that computes ``x + bias`` exactly enough (γ = sqrt(1 + eps), μ = 0, σ² = 1)."""
    sd[prefix + ".weight"] = torch.full_like(sd[prefix + ".weight"], math.sqrt(1.0 + eps))
    sd[prefix + ".bias"] = bias.to(sd[prefix + ".bias"].dtype).clone()


def lift_inference_form(canon: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], int]:
    """Replace Apple inference-form convs in ``canon`` by equivalent train-time branch values of ``model``.

    For each fused conv (W, b): every branch of the train-time module is zeroed (conv weights 0, BN γ=β=μ=0,
    σ²=1) and one branch carries it: MobileOne / large kernel: ``conv = W`` with BN ``y + b``; RepMixer
    ``x + ls·(mixer(x) − norm(x))``: ``ls = 1``, ``norm = 0``, ``mixer = W − I``; RepCPE ``x + pe(x)``:
    ``pe = W − I``. Returns the new dict and how many modules were lifted.
    """
    from mobileclip_export.reparam.fuse import identity_kernel

    model_sd = model.state_dict()
    shapes = {k: v.shape for k, v in model_sd.items()}
    out = dict(canon)
    lifted = 0
    for r in keymaps.reparam_modules(shapes):
        wk, bk = r.fused + ".weight", r.fused + ".bias"
        branch = keymaps._branch_keys(r, shapes)
        if wk not in out or any(k in out for k in branch):
            continue
        w, b = out.pop(wk), out.pop(bk, None)
        if b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype)
        for k in branch:  # zero every branch first
            ref = model_sd[k]
            out[k] = torch.ones_like(ref) if k.endswith("running_var") else torch.zeros_like(ref)
        if r.kind in ("repmixer", "repcpe"):
            groups = w.shape[0] // w.shape[1] if w.shape[1] else 1
            w = w - identity_kernel(w.shape[0], groups, tuple(w.shape[-2:]), dtype=w.dtype)
        if r.kind == "repcpe":
            out[r.prefix + ".pe.weight"], out[r.prefix + ".pe.bias"] = w, b
        else:
            carrier = {
                "mobileone": ".rbr_conv.0",
                "large_kernel": ".lkb_origin",
                "repmixer": ".mixer.rbr_conv.0",
            }[r.kind]
            cp = r.prefix + carrier
            out[cp + ".conv.weight"] = w.to(model_sd[cp + ".conv.weight"].dtype)
            _bn_identity(out, cp + ".bn", model.get_submodule(cp + ".bn").eps, b)
            if r.kind == "repmixer":
                out[r.prefix + ".layer_scale"] = torch.ones_like(model_sd[r.prefix + ".layer_scale"])
        lifted += 1
    return out, lifted


# --------------------------------------------------------------------------------------- fingerprints


def _mci_guess(depths: tuple[int, ...], stem_channels: int) -> str:
    """The MCi variant(s) with these stage depths, else with this stem width ("mci0/mci1"), else "mci?"."""
    cfgs = {n: mci_config(n) for n in mci_names()}
    names = [n for n, c in cfgs.items() if c.layers == depths]
    names = names or [n for n, c in cfgs.items() if c.embed_dims[0] == stem_channels]
    return "/".join(names) or "mci?"


def _towers(sd: Mapping[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    sd = _normalize(dict(sd), fmt)
    if fmt == "apple":
        ip, tp = IMAGE_PREFIX, TEXT_PREFIX
    elif fmt == "open_clip":
        ip, tp = "visual.trunk.", "text."
    else:
        return dict(sd), {}
    img = {k[len(ip) :]: v for k, v in sd.items() if k.startswith(ip)}
    txt = {k[len(tp) :]: v for k, v in sd.items() if k.startswith(tp)}
    return img, txt


def _trained_bias(b: Tensor | None) -> bool:
    """A head bias that changes the output: present and non-zero (a shape-only meta tensor counts)."""
    return b is not None and (b.is_meta or bool(b.numel() and b.abs().max() != 0))


def fingerprint(sd: Mapping[str, Tensor], fmt: str) -> dict:
    """Distinctive shapes of a state_dict in any format: image family/width/depths/head, text width/layers."""
    img, txt = _towers(sd, fmt)
    fp: dict = {}
    stem = next(
        (
            v
            for k, v in img.items()
            if re.fullmatch(
                r"(patch_embed|stem)\.0\.(rbr_conv\.0\.conv|conv_kxk\.0\.conv|reparam_conv)\.weight", k
            )
        ),
        None,
    )
    if stem is not None:
        depth: dict[int, set[int]] = {}
        for k in img:
            m = re.match(r"network\.(\d+)\.(\d+)\.", k) or re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
            if m:
                depth.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        fp["image"] = "fastvit"
        fp["stem_channels"] = int(stem.shape[0])
        fp["depths"] = tuple(len(depth[i]) for i in sorted(depth))
        if "head.proj" in img:
            fp["head"] = tuple(img["head.proj"].shape)
        elif "head.fc.weight" in img:
            fp["head"] = tuple(img["head.fc.weight"].shape[::-1])
        fp["head_bias"] = _trained_bias(img.get("head.bias", img.get("head.fc.bias")))
        fp["image_encoder"] = _mci_guess(fp["depths"], fp["stem_channels"])
    elif "patch_emb.0.block.conv.weight" in img or "patch_embed.backbone.0.conv.weight" in img:
        fp["image"] = "vit_b16"
        fp["image_encoder"] = "vit_b16"
        fp["depths"] = (
            len({m.group(2) for k in img if (m := re.match(r"(transformer|blocks)\.(\d+)\.", k))}),
        )
        if "cls_token" in img:
            fp["width"] = int(img["cls_token"].shape[-1])
        fp["head_bias"] = _trained_bias(img.get("classifier.bias", img.get("head.bias")))
    elif "patch_embed.proj.weight" in img:
        fp["image"] = "vit_l14"
        fp["image_encoder"] = "vit_l14"
        fp["width"] = int(img["patch_embed.proj.weight"].shape[0])
        fp["depths"] = (len({m.group(1) for k in img if (m := re.match(r"blocks\.(\d+)\.", k))}),)
    emb = txt.get("embedding_layer.weight", txt.get("token_embedding.weight"))
    if emb is not None:
        fp["text_width"] = int(emb.shape[1])
        fp["text_layers"] = len(
            {m.group(1) for k in txt if (m := re.match(r"transformer\.(?:resblocks\.)?(\d+)\.", k))}
        )
        mct = any(".token_mixer." in "." + k for k in txt)
        fp["text_encoder"] = "mct" if mct else f"base-{fp['text_width']}"
    return fp


def _fp_text(fp: dict) -> str:
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


def _variant_names(fp: dict) -> list[str]:
    from mobileclip_export.models.registry import get_model_spec, list_models

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


# ---------------------------------------------------------------------------------------------- loading


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _fingerprints(ck: Checkpoint, model: nn.Module) -> tuple[dict, dict]:
    fp_ck = fingerprint(ck.state_dict, ck.format)
    fp_model = fingerprint(model.state_dict(), "apple")
    if ck.format == "timm":
        fp_model = {k: v for k, v in fp_model.items() if not k.startswith("text")}
    return fp_ck, fp_model


def fingerprint_differs(ck: Checkpoint, model: nn.Module) -> bool:
    """True when the checkpoint's distinctive shapes say it is another variant than ``model``."""
    fp_ck, fp_model = _fingerprints(ck, model)
    return bool(fp_ck) and fp_ck != fp_model


def _mismatch_error(
    ck: Checkpoint, model: nn.Module, missing: list[str], unexpected: list[str], bad_shapes: list[str]
) -> CheckpointError:
    fp_ck, fp_model = _fingerprints(ck, model)
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    msg = f"checkpoint {ck.path} ({ck.format}) does not fit model {name!r}: "
    if fp_ck != fp_model and fp_ck:
        names = _variant_names(fp_ck)
        msg += (
            f"it looks like a different variant: {_fp_text(fp_ck)}"
            + (f" [= {', '.join(names)}]" if names else "")
            + f"; the model is {_fp_text(fp_model)}. "
        )
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if bad_shapes:
        parts.append(f"{len(bad_shapes)} shape mismatches: {_first(bad_shapes, 3)}")
    return CheckpointError(msg + "; ".join(parts))


def _zero_fill_head_bias(canon: dict[str, Tensor], shapes: Mapping[str, torch.Size]) -> list[str]:
    """A bias-free head checkpoint (Apple v1 ``head.proj``/``classifier.proj``) for a head with a bias: the
    bias becomes zero, which is exactly the checkpoint's function. Only when the head weight is there, so a
    foreign head (other names, extra layers) still fails as missing/unexpected keys."""
    head = keymaps.image_head_keys(shapes)
    if head is None or head[1] is None or head[1] in canon or head[0] not in canon:
        return []
    canon[head[1]] = torch.zeros(shapes[head[1]], dtype=canon[head[0]].dtype)
    return [head[1]]


def _biased_variants_hint(ck: Checkpoint) -> str:
    names = _variant_names(fingerprint(ck.state_dict, ck.format))
    return f" (it fits: {', '.join(names)})" if names else ""


def _check_keys(
    ck: Checkpoint, model: nn.Module, canon: dict, unknown: list, shapes: dict, image_only: bool
) -> set[str]:
    """The model keys this checkpoint must fill; raises naming missing/unexpected keys and bad shapes."""
    expected = set(shapes)
    if image_only:
        expected = {k for k in expected if k.startswith(IMAGE_PREFIX)}
    missing = sorted(k for k in expected - set(canon) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(unknown) | (set(canon) - set(shapes)))
    bad_shapes = [
        f"{k}: checkpoint {list(canon[k].shape)} vs model {list(shapes[k])}"
        for k in sorted(set(canon) & expected)
        if canon[k].shape != shapes[k]
    ]
    if missing or unexpected or bad_shapes:
        if ck.reparameterized and missing and not fingerprint_differs(ck, model):
            raise CheckpointError(
                f"{ck.path} is reparameterized beyond Apple's inference form (e.g. this project's fully "
                f"fused model) and cannot be lifted into train-time keys ({len(missing)} missing: "
                f"{_first(missing, 3)}); load it into reparameterize_model(model) (load_model_checkpoint "
                "does this)"
            )
        raise _mismatch_error(ck, model, missing, unexpected, bad_shapes)
    return expected


def _add_notes(report: LoadReport, ck: Checkpoint, zero_filled: list[str], image_only: bool) -> None:
    """What a user must know about a load that succeeded (zero-filled bias, image tower only)."""
    if zero_filled:
        report.notes.append(
            f"the checkpoint's image head has no bias (Apple v1 form): {zero_filled[0]} set to zero, so the "
            "head computes exactly what the checkpoint's does"
        )
        log.info("%s: bias-free image head, %s zero-filled", ck.path, zero_filled[0])
    if image_only:
        report.notes.append(
            "timm checkpoints hold the image tower only: text_encoder and logit_scale are "
            "unchanged (random unless loaded separately)"
        )
        log.warning("%s: image tower only; the text encoder stays random", ck.path)


def load_checkpoint(model: nn.Module, path: str | Path | Checkpoint) -> LoadReport:
    """Load ``path`` into ``model`` in place (strict: every key and shape must match); returns a LoadReport.

    Accepts apple/open_clip/timm names, train-time or Apple/timm inference form (lifted). A timm image
    tower loads only ``image_encoder``; the text encoder and logit_scale keep their values.
    """
    ck = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    model_sd = model.state_dict()
    shapes = {k: v.shape for k, v in model_sd.items()}
    kmap = _keymap_for(model, ck.format)
    canon, unknown, problems = kmap.to_canonical(ck.state_dict, shapes)
    if problems:
        raise CheckpointError(f"{ck.path}: " + "; ".join(problems) + _biased_variants_hint(ck))
    canon, lifted = lift_inference_form(canon, model)
    zero_filled = _zero_fill_head_bias(canon, shapes)

    image_only = ck.format == "timm"
    expected = _check_keys(ck, model, canon, unknown, shapes, image_only)

    with torch.no_grad():
        for k in expected & set(canon):
            model_sd[k].copy_(canon[k].to(model_sd[k].dtype))
    report = LoadReport(
        format=ck.format,
        reparameterized=ck.reparameterized,
        sha256=ck.sha256,
        n_tensors=len(ck.state_dict),
        path=str(ck.path),
        loaded="image only (text encoder stays random)" if image_only else "image+text",
        lifted_modules=lifted,
        zero_filled=zero_filled,
    )
    _add_notes(report, ck, zero_filled, image_only)
    return report


def load_model_checkpoint(model: nn.Module, path: str | Path) -> tuple[nn.Module, LoadReport]:
    """Like ``load_checkpoint`` but returns the model to use: a checkpoint of this project's fully fused
    inference form is loaded into ``reparameterize_model(model)`` instead of ``model``."""
    ck = read_checkpoint(path)
    try:
        return model, load_checkpoint(model, ck)
    except CheckpointError:
        if not ck.reparameterized:
            raise
    from mobileclip_export.reparam import reparameterize_model

    fused = reparameterize_model(model)
    return fused, load_checkpoint(fused, ck)

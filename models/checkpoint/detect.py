"""Which checkpoint format and which model form a state_dict is in, from its key names alone.

Formats: Apple v1 ``.pt`` (our canonical names), open_clip (``visual.trunk.*`` + ``text.*``, optionally
under ``module.``, or plain-CLIP text at the top level), timm image towers. Form: train-time (multi-branch)
or reparameterized (fused convs, no train-time branch left).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from mobileclip_export.errors import CheckpointError

from .keymaps import FORMATS, IMAGE_PREFIX, TEXT_PREFIX

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


def _strip_module(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def normalize(sd: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
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
    checkpoint of this project's fully fused model must go into ``reparameterize_model(model)``, which
    ``mobileclip_export.reparam.load_model_checkpoint`` does.
    """
    keys = ["." + k for k in sd]
    return any(_FUSED.search(k) for k in keys) and not any(_TRAIN_BRANCH.search(k) for k in keys)

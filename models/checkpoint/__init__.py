"""Safe checkpoint loading, by concern:

- ``read``: file -> ``{name: tensor}`` without running code (``torch.load(weights_only=True)`` or
  safetensors), hashed and normalized into a ``Checkpoint``;
- ``detect``: the format (apple / open_clip / timm) and form (train-time or reparameterized) from key names;
- ``keymaps``: key maps between our canonical (Apple v1) names and timm / open_clip names;
- ``lift``: Apple/timm inference-form convs folded back exactly into the train-time branches;
- ``fingerprints``: distinctive shapes, so a checkpoint of another variant is named;
- ``load``: ``load_checkpoint(model, path) -> LoadReport``, strict.

A checkpoint of this project's fully fused model loads only into ``reparameterize_model(model)``:
``mobileclip_export.reparam.load_model_checkpoint`` does that (models never import reparam).
"""

from __future__ import annotations

from mobileclip_export.errors import CheckpointError

from .detect import detect_format, needs_inference_form
from .fingerprints import fingerprint, fingerprint_differs
from .keymaps import FORMATS, export_state_dict
from .lift import lift_inference_form
from .load import LoadReport, load_checkpoint
from .read import (
    SAFETENSORS_SUFFIXES,
    TORCH_SUFFIXES,
    Checkpoint,
    check_checkpoint_format,
    load_state_dict_file,
    read_checkpoint,
)

__all__ = [
    "FORMATS",
    "SAFETENSORS_SUFFIXES",
    "TORCH_SUFFIXES",
    "Checkpoint",
    "CheckpointError",
    "LoadReport",
    "check_checkpoint_format",
    "detect_format",
    "export_state_dict",
    "fingerprint",
    "fingerprint_differs",
    "lift_inference_form",
    "load_checkpoint",
    "load_state_dict_file",
    "needs_inference_form",
    "read_checkpoint",
]

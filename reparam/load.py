"""Models from checkpoints of either form, including this project's fully fused one.

A checkpoint saved from this project's reparameterized model (``reparameterize_model(model).state_dict()``)
has no train-time keys to lift, so it loads only into ``reparameterize_model(model)``. That step needs
reparam, and models never import reparam: so it lives here, and every caller that takes a user's checkpoint
(export, zero-shot, predict, bench) builds its model with ``create_model`` from this module.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mobileclip_export.errors import CheckpointError
from mobileclip_export.models import factory
from mobileclip_export.models.checkpoint import LoadReport, load_checkpoint, read_checkpoint

from .registry import reparameterize_model


def load_model_checkpoint(model: nn.Module, path: str | Path) -> tuple[nn.Module, LoadReport]:
    """Like ``load_checkpoint`` but returns the model to use: a checkpoint of this project's fully fused
    form is loaded into ``reparameterize_model(model)`` instead of ``model``."""
    ck = read_checkpoint(path)
    try:
        return model, load_checkpoint(model, ck)
    except CheckpointError:
        if not ck.reparameterized:
            raise
    fused = reparameterize_model(model)
    return fused, load_checkpoint(fused, ck)


def create_model(
    name: str, checkpoint: str | Path | None = None, *, seed: int = 0, reduced: bool = False
) -> nn.Module:
    """``mobileclip_export.models.create_model``, and a fully fused checkpoint gives the fused model.

    Any other checkpoint (and none) gives the same train-time model as ``models.create_model``.
    """
    if checkpoint is None:
        return factory.create_model(name, None, seed=seed, reduced=reduced)
    model = factory.seeded_model(name, seed=seed, reduced=reduced)
    model, report = load_model_checkpoint(model, Path(checkpoint))
    return factory.mark_loaded(model, report)

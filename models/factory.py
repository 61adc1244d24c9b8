"""Building models: ``create_model`` (train-time network, weights from a checkpoint or seeded random).

``create_model`` builds the train-time network (the form checkpoints are stored in). Without a
checkpoint the weights are seeded random (``random_init=True``, logged as a WARNING); the global
torch RNG is left untouched so building a model never changes anyone else's random stream. A checkpoint of
this project's fully fused form needs the reparameterized model: ``mobileclip_export.reparam.create_model``
loads those too (models never import reparam).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from mobileclip_export.errors import UnknownNameError
from mobileclip_export.models.catalog import get_model_spec
from mobileclip_export.models.checkpoint import LoadReport, load_checkpoint
from mobileclip_export.models.clip import ImageEncoder, MobileCLIP
from mobileclip_export.models.mci import build_mci, mci_names
from mobileclip_export.models.spec import ModelSpec
from mobileclip_export.models.text import build_text_encoder
from mobileclip_export.models.vit import VIT_ENCODERS, build_vit

log = logging.getLogger(__name__)


def build_image_network(
    name: str, embed_dim: int, *, image_size: int, reduced: bool = False, head_bias: bool | None = None
) -> nn.Module:
    """The image network incl. its projection head (what sits at ``image_encoder.model``).

    ``head_bias``: whether the projection has a bias (None: the encoder architecture's default)."""
    if name in VIT_ENCODERS:
        return build_vit(name, embed_dim, image_size=image_size, reduced=reduced, head_bias=head_bias)
    if name in mci_names():
        return build_mci(name, embed_dim, reduced=reduced, head_bias=head_bias)
    raise UnknownNameError("image encoder", name, [*mci_names(), *VIT_ENCODERS])


def build_model(spec: ModelSpec, *, reduced: bool = False) -> MobileCLIP:
    """Construct the train-time model for ``spec`` with the current RNG (no seeding, no loading)."""
    pre = spec.preprocessing
    norm = None if pre.is_identity_normalization else (pre.mean, pre.std)
    network = build_image_network(
        spec.image_encoder,
        spec.embed_dim,
        image_size=spec.image_size,
        reduced=reduced,
        head_bias=spec.image_head_bias,
    )
    image = ImageEncoder(network, *(norm or (None, None)))
    text = build_text_encoder(
        spec.text_encoder,
        spec.embed_dim,
        context_length=spec.context_length,
        vocab_size=spec.vocab_size,
        causal=spec.causal_text,
        reduced=reduced,
    )
    model = MobileCLIP(spec, image, text)
    model.reduced = reduced
    return model


def seeded_model(name: str, *, seed: int = 0, reduced: bool = False) -> MobileCLIP:
    """The train-time model of ``name`` with weights from ``seed``; the global RNG is left as it was."""
    spec = get_model_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, reduced=reduced)
    model.seed = seed
    return model


def mark_loaded(model: nn.Module, report: LoadReport) -> nn.Module:
    """Record on ``model`` that its weights came from the checkpoint ``report`` describes; eval mode."""
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    log.info("loaded %s into %s: %s", report.path, name, report)
    model.random_init = False
    model.checkpoint_sha256 = report.sha256
    return model.eval()


def create_model(
    name: str, checkpoint: str | Path | None = None, *, seed: int = 0, reduced: bool = False
) -> MobileCLIP:
    """Build ``name`` in eval mode: weights from ``checkpoint``, else seeded random weights.

    Raises ``UnknownNameError`` for an unknown name and ``CheckpointError`` for a bad checkpoint (also for
    one of this project's fully fused form: ``mobileclip_export.reparam.create_model`` loads those).
    """
    model = seeded_model(name, seed=seed, reduced=reduced)
    if checkpoint is None:
        log.warning(
            "%s%s: no checkpoint given, using seeded random weights (seed=%d); embeddings are meaningless",
            name,
            " (reduced)" if reduced else "",
            seed,
        )
        model.random_init = True
        return model.eval()
    mark_loaded(model, load_checkpoint(model, Path(checkpoint)))
    return model

"""The two-tower model: ``MobileCLIP`` (Apple's ``CLIP`` key layout) and the ``ImageEncoder`` wrapper."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobileclip_export.models.spec import ModelSpec

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = 100.0


class ImageEncoder(nn.Module):
    """RGB in [0, 1] ``[B, 3, H, W]`` -> unnormalized embedding ``[B, D]``.

    Applies the variant's mean/std (non-persistent buffers ``mean``/``std``) before ``model`` only
    when they are not the identity, so identity-normalized variants carry no extra ops.
    """

    def __init__(
        self, model: nn.Module, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
    ):
        super().__init__()
        self.model = model
        identity = mean is None or (
            tuple(mean) == (0.0, 0.0, 0.0) and tuple(std or (1.0,) * 3) == (1.0, 1.0, 1.0)
        )
        if identity:
            self.mean = None
            self.std = None
        else:
            self.register_buffer(
                "mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False
            )
            self.register_buffer(
                "std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.model(x)


class MobileCLIP(nn.Module):
    """Image + text towers and ``logit_scale`` (log space), with provenance attributes."""

    def __init__(self, spec: ModelSpec, image_encoder: ImageEncoder, text_encoder: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT, dtype=torch.float32))
        self.image_size: int = spec.image_size
        self.context_length: int = spec.context_length
        self.embed_dim: int = spec.embed_dim
        self.random_init: bool = True
        self.seed: int | None = None
        self.reduced: bool = False
        self.checkpoint_sha256: str | None = None

    def encode_image(self, x: Tensor, normalize: bool = False) -> Tensor:
        f = self.image_encoder(x)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        f = self.text_encoder(ids)
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, image: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """L2-normalized image and text features and ``clamp(exp(logit_scale), max=100)``."""
        return (
            self.encode_image(image, normalize=True),
            self.encode_text(ids, normalize=True),
            self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX),
        )

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, random_init={self.random_init}, reduced={self.reduced}"

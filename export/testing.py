"""Tiny stand-in encoders for fast pipeline and backend tests (seconds, not minutes).

``ToyCLIP`` has the ``MobileCLIP`` surface the pipeline uses (image_encoder/text_encoder/logit_scale/spec/
random_init/seed/checkpoint_sha256) with the shapes of a real variant: a conv (+ optional BatchNorm) +
attention image tower with internal mean/std, and a causal text tower with argmax (EOT) pooling over
int32 ids. ``use_toy_models(monkeypatch)`` swaps it into ``export_model``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn


class ToyImageEncoder(nn.Module):
    def __init__(
        self,
        dim: int,
        embed_dim: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)
        self.model = nn.Sequential()
        self.model.add_module("stem", nn.Conv2d(3, dim, 4, stride=4))
        self.model.add_module("act", nn.GELU())
        if batchnorm:  # after the activation: no converter can fold it into the conv for us
            self.model.add_module("bn", nn.BatchNorm2d(dim))
        self.model.add_module("body", _ToyAttnPool(dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class _ToyAttnPool(nn.Module):
    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.pool(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.proj(t.mean(1))


class ToyTextEncoder(nn.Module):
    def __init__(self, dim: int, embed_dim: int, context_length: int = 77, vocab: int = 49408) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context_length, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(dim, 2, dim * 2, batch_first=True, dropout=0.0)
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.randn(dim, embed_dim) / math.sqrt(dim))
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos
        x = self.ln(self.layer(x, src_mask=self.mask))
        eot = ids.argmax(dim=-1)  # on the int32 ids, as the real text encoders do
        return x[torch.arange(x.shape[0]), eot] @ self.proj


class ToyCLIP(nn.Module):
    def __init__(self, spec: Any, seed: int = 0, dim: int = 16, batchnorm: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pre = spec.preprocessing
            self.image_encoder = ToyImageEncoder(dim, spec.embed_dim, pre.mean, pre.std, batchnorm)
            self.text_encoder = ToyTextEncoder(dim, spec.embed_dim, spec.context_length)
            if batchnorm:  # non-trivial statistics, so a missed fold changes outputs
                bn = self.image_encoder.model.bn
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.spec = spec
        self.random_init = True
        self.seed = seed
        self.checkpoint_sha256: str | None = None
        self.eval()


def toy_spec(name: str = "mobileclip_s0", image_size: int = 64, embed_dim: int = 32) -> Any:
    from mobileclip_export.models import get_model_spec

    spec = get_model_spec(name)
    pre = dataclasses.replace(spec.preprocessing, resize=image_size, crop=image_size)
    return dataclasses.replace(spec, image_size=image_size, embed_dim=embed_dim, preprocessing=pre)


def use_toy_models(
    monkeypatch: Any,
    *,
    image_size: int = 64,
    embed_dim: int = 32,
    batchnorm: bool = False,
    identity_reparam: bool = False,
) -> None:
    """Make ``export_model`` build ToyCLIP for any known model name (real names are still validated)."""
    from mobileclip_export.export import api

    real_spec = api._get_spec

    def get_spec(name: str) -> Any:
        real_spec(name)  # unknown names still raise with the list of models
        return toy_spec(name, image_size, embed_dim)

    def create(name: str, checkpoint: Any, seed: int, reduced: bool) -> nn.Module:
        return ToyCLIP(get_spec(name), seed=seed, batchnorm=batchnorm)

    monkeypatch.setattr(api, "_get_spec", get_spec)
    monkeypatch.setattr(api, "_create_model", create)
    if identity_reparam:
        monkeypatch.setattr(api, "_reparameterize", lambda m: m)

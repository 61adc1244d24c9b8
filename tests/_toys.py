"""Tiny stand-in encoders for fast pipeline and backend tests (seconds, not minutes).

``ToyCLIP`` has the ``MobileCLIP`` surface the pipeline uses (image_encoder/text_encoder/logit_scale/spec/
random_init/seed/checkpoint_sha256) with the shapes of a real variant: a conv (+ optional BatchNorm) +
attention image tower with internal mean/std, and a causal text tower with argmax (EOT) pooling over
int32 ids. ``use_toy_models(monkeypatch)`` swaps it into ``export_model``.

The deploy-form toys at the end (folded BN, depthwise, SE, attention; pre-norm text, causal or full mask,
plus seeded inputs) drive the backend tests directly, without the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from mobileclip_export.export.spec import EncoderExport


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
    """Embedding + positions, one transformer layer, LayerNorm, EOT (argmax) pooling, projection.

    Defaults are the pipeline toy; the keywords give the backend toy (``deploy_toy_text``).
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        context_length: int = 77,
        vocab: int = 49408,
        *,
        causal: bool = True,
        norm_first: bool = False,
        activation: str = "relu",
        pos_scale: float = 0.02,
        proj_scale: float | None = None,  # None: 1/sqrt(dim)
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context_length, dim) * pos_scale)
        self.layer = nn.TransformerEncoderLayer(
            dim, 2, dim * 2, 0.0, activation, batch_first=True, norm_first=norm_first
        )
        self.ln = nn.LayerNorm(dim)
        scale = 1 / math.sqrt(dim) if proj_scale is None else proj_scale
        self.proj = nn.Parameter(torch.randn(dim, embed_dim) * scale)
        n = context_length
        mask = torch.full((n, n), float("-inf")).triu(1) if causal else torch.zeros(n, n)
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
    from mobileclip_export.export.pipeline import api

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


# ---------------------------------------------------------------- deploy-form toys for backend tests

TOY_EMBED = 16
TOY_VOCAB = 500


class _ToySE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(x, kernel_size=[x.shape[2], x.shape[3]])  # MobileCLIP's SE global pool
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(y))))


class DeployToyImage(nn.Module):
    """conv+BN (folded) -> depthwise -> SE -> attention -> mean pool -> projection; input RGB [0,1]."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.48, 0.46, 0.41]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1), persistent=False)
        stem, bn = nn.Conv2d(3, dim, 8, 8), nn.BatchNorm2d(dim)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        self.stem = torch.nn.utils.fusion.fuse_conv_bn_eval(stem.eval(), bn.eval())
        self.dw = nn.Conv2d(dim, dim, 7, 2, 3, groups=dim)
        self.se = _ToySE(dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.proj = nn.Parameter(torch.randn(dim, TOY_EMBED) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.gelu(self.dw(F.gelu(self.stem((x - self.mean) / self.std)))))
        t = x.flatten(2).transpose(1, 2)
        n = self.norm(t)
        t = t + self.attn(n, n, n, need_weights=False)[0]
        return t.mean(1) @ self.proj


def deploy_toy_text(causal: bool, dim: int = 16, length: int = 77) -> ToyTextEncoder:
    """Pre-norm GELU text toy (vocab ``TOY_VOCAB``), causal or full attention mask."""
    return ToyTextEncoder(
        dim,
        TOY_EMBED,
        length,
        TOY_VOCAB,
        causal=causal,
        norm_first=True,
        activation="gelu",
        pos_scale=0.1,
        proj_scale=0.3,
    )


def toy_image_input(seed: int = 0, n: int = 1, size: int = 256) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def toy_ids(seed: int = 0, n: int = 1, vocab: int = TOY_VOCAB) -> torch.Tensor:
    """int32 ids, longer per row: SOT, random tokens, EOT (the largest id, found by argmax)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, 77, dtype=torch.int32)
    for row in range(n):
        k = 3 + row * 4
        ids[row, 0] = vocab - 2
        ids[row, 1 : k + 1] = torch.randint(1, vocab - 3, (k,), generator=g, dtype=torch.int32)
        ids[row, k + 1] = vocab - 1
    return ids


# ---------------------------------------------------------------- real reduced encoders for backend tests


def reduced_encoder_export(model_name: str, encoder: str) -> tuple[EncoderExport, nn.Module]:
    """(EncoderExport of the reparameterized reduced encoder, the train-time encoder as reference).

    Seed 0 with randomized BN statistics and layer scales, so a missed or wrong fold changes outputs. Callers
    cache it per test module (``functools.cache``) so no artifact test sees another module's mutations.
    """
    import json

    from mobileclip_export.export.pipeline.encoders import encoder_export
    from mobileclip_export.models import create_model
    from mobileclip_export.models.tokenizer import tokenizer_config
    from mobileclip_export.reparam import reparameterize_model
    from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales

    train = create_model(model_name, seed=0, reduced=True)
    randomize_bn_and_layer_scales(train, 0)
    train.eval()
    inf = reparameterize_model(train).eval()
    spec = inf.spec
    meta = {"model": model_name, "encoder": encoder, "embed_dim": str(spec.embed_dim), "logit_scale": "100"}
    if encoder == "image":
        meta["preprocessing"] = json.dumps(spec.preprocessing.to_dict(), sort_keys=True)
    else:
        meta["tokenizer"] = json.dumps(tokenizer_config(), sort_keys=True, default=str)
    enc = encoder_export(model_name, encoder, inf, meta)
    return enc, train.image_encoder if encoder == "image" else train.text_encoder


# ---------------------------------------------------------------- real MobileCLIP encoders for backend tests

# One variant per image block family and per (text family, causal).
IMAGE_FAMILIES = ["mobileclip_s0", "mobileclip_s2", "mobileclip_s3", "mobileclip_b", "mobileclip2_b"]
TEXT_FAMILIES = ["mobileclip_s0", "mobileclip_s1", "mobileclip_b", "mobileclip_s3"]


def randomized_encoder_export(name: str, encoder: str, reduced: bool = True) -> EncoderExport:
    """The reparameterized encoder of a seeded model whose BN statistics and layer scales were randomized."""
    from mobileclip_export.export.pipeline.encoders import encoder_export
    from mobileclip_export.models import create_model
    from mobileclip_export.reparam import reparameterize_model
    from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales

    model = create_model(name, reduced=reduced)
    model = reparameterize_model(randomize_bn_and_layer_scales(model, seed=0)).eval()
    size = model.spec.image_size
    example = torch.from_numpy(structured_inputs(encoder, size)[:1])
    return encoder_export(name, encoder, model, {"model": name, "encoder": encoder}, example=example)


def structured_inputs(encoder: str, size: int = 256) -> np.ndarray:
    """Structurally different inputs: random-init image encoders are dominated by a constant, so noise-only
    batches would hide an input-independent bug; the fp32 check also compares batch-centered embeddings."""
    if encoder == "text":
        ids = np.zeros((3, 77), dtype=np.int32)
        ids[0, :6] = [49406, 320, 1125, 539, 2368, 49407]
        ids[1, :4] = [49406, 1929, 4558, 49407]
        ids[2, :9] = [49406, 320, 2368, 539, 320, 1929, 4558, 1125, 49407]
        return ids
    from mobileclip_export.export.verify_inputs import gradient_image, random_images

    (noise,) = random_images(size, 1, seed=0)
    ramp = gradient_image(size)
    square = np.zeros((3, size, size), np.float32)
    square[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return np.ascontiguousarray(np.stack([noise, ramp, square]))


# ---- model card checks (tests; markdown-it-py from the test extra) ----
_CARD_GENERIC = {"mlmodelc"}  # literals a snippet needs that are not names of the bundle (file extension)


def bundle_names(bundle: Path) -> set[str]:
    """Every name a snippet may legitimately quote: files (path, name, stem), tensors, signatures."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = set()
    for p in bundle.rglob("*"):
        rel = p.relative_to(bundle)
        names |= {
            rel.as_posix(),
            p.name,
            p.stem if p.suffix in (".mlpackage", ".tflite", ".pte", ".onnx") else "",
        }
    for a in manifest["artifacts"]:
        names |= {s["name"] for s in a["inputs"] + a["outputs"]}
        names.add(a.get("details", {}).get("signature", ""))
    return names - {""}


def card_code_blocks(card: str) -> dict[str, list[str]]:
    import markdown_it

    tokens = markdown_it.MarkdownIt().parse(card.split("\n---\n", 1)[1])
    out: dict[str, list[str]] = {}
    for t in tokens:
        if t.type == "fence":
            out.setdefault(t.info, []).append(t.content)
    return out


def check_snippet_names(bundle: Path) -> set[str]:
    card = (bundle / "README.md").read_text("utf-8")
    quoted = set()
    for blocks in card_code_blocks(card).values():
        for block in blocks:
            quoted |= set(re.findall(r'"([^"\s]+)"', block))
    missing = quoted - bundle_names(bundle) - _CARD_GENERIC
    assert not missing, f"snippet names not in the bundle: {missing}"
    return quoted

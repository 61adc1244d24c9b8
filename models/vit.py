"""ViT image encoders: ViT-B/16 with a conv stem (MobileCLIP-B / B-LT / MobileCLIP2-B) and ViT-L/14.

- ViT-B/16 uses Apple's cvnets names (``patch_emb``, ``transformer``, ``post_transformer_norm``,
  ``cls_token``, ``pos_embed.pos_embed.pos_embed``, ``classifier.proj``), so v1 ``image_encoder.model.*``
  keys load unchanged. The first stem conv's padding is a parameter: Apple's ``ConvNormAct`` pads the
  4x4/s4 conv by 1 (v1 B/B-LT checkpoints), timm's ``vit_base_mci_224`` by 0 (MobileCLIP2-B, trained
  in timm/open_clip). The stem BatchNorms are folded by ``reparam/rules_vit.py``.
- ViT-L/14 uses timm's ``vit_large_patch14_clip_224`` names: no Apple-format checkpoint exists.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from mobileclip_export.errors import UnknownNameError, UsageError
from mobileclip_export.models.text import PositionalEmbedding, TransformerEncoder


class ConvNormAct(nn.Module):
    """``block = Sequential(conv[, norm][, act])`` (Apple ``ConvNormAct``; keys ``block.conv/norm``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int,
        *,
        padding: int,
        use_norm: bool = True,
        use_act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        bias = (not use_norm) if bias is None else bias
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
        }
        if use_norm:
            layers["norm"] = nn.BatchNorm2d(out_ch)
        if use_act:
            layers["act"] = nn.GELU()
        self.block = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ConvAct(nn.Module):
    """Inference form of ``ConvNormAct``: BN folded into ``block.conv`` (which has a bias)."""

    def __init__(self, layers: OrderedDict[str, nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _Classifier(nn.Module):
    """Projection stored as ``proj`` ``[in, out]`` (Apple's bias-free ``classifier.proj``); MobileCLIP2-B's
    tower ends in timm's ``head`` Linear, whose trained bias is kept as ``bias`` ``[out]``."""

    def __init__(self, dim: int, embed_dim: int, *, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.empty(dim, embed_dim))
        self.bias = nn.Parameter(torch.empty(embed_dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.proj
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class ViTConfig:
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    image_size: int = 224
    stem_padding: int = 1  # Apple ConvNormAct: 1; timm vit_base_mci_224: 0
    ln_eps: float = 1e-5
    patch_size: int = 14  # ViT-L only
    head_bias: bool = True  # Apple's cvnets classifier: False; timm heads (vit_base_mci_224, ViT-L): True


class ViTB16(nn.Module):
    """cvnets-style ViT-B/16 with a 3-conv stem (stride 4, 2, 2); cls token pooling, no-bias projection."""

    def __init__(self, cfg: ViTConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.dim // 4
        self.patch_emb = nn.Sequential(
            ConvNormAct(3, c, 4, 4, padding=cfg.stem_padding),
            ConvNormAct(c, c, 2, 2, padding=0),
            ConvNormAct(c, cfg.dim, 2, 2, padding=0, use_norm=False, use_act=False),
        )
        self.num_patches = self._grid(cfg.image_size) ** 2
        self.cls_token = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.pos_embed = PositionalEmbedding(self.num_patches, cfg.dim)
        self.transformer = nn.ModuleList(
            [TransformerEncoder(cfg.dim, cfg.heads, cfg.mlp_dim, ln_eps=cfg.ln_eps) for _ in range(cfg.depth)]
        )
        self.post_transformer_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.classifier = _Classifier(cfg.dim, embed_dim, bias=cfg.head_bias)
        with torch.no_grad():
            # Linear layers keep torch's default init (cheap; random weights only feed tests).
            nn.init.normal_(self.cls_token, std=0.02)
            nn.init.normal_(self.pos_embed.pos_embed.pos_embed, std=0.02)
            nn.init.normal_(self.classifier.proj, std=cfg.dim**-0.5)
            if self.classifier.bias is not None:
                nn.init.uniform_(self.classifier.bias, -(cfg.dim**-0.5), cfg.dim**-0.5)

    def _grid(self, size: int) -> int:
        # first conv: (size + 2p - 4) // 4 + 1, then two exact halvings
        return ((size + 2 * self.cfg.stem_padding - 4) // 4 + 1) // 4

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_emb(x).flatten(2).transpose(1, 2)  # [B, N, D]
        # Positions are added before the cls token is prepended: the cls token has none.
        x = x + self.pos_embed(x.shape[1])
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for layer in self.transformer:
            x = layer(x)
        x = self.post_transformer_norm(x)
        return self.classifier(x[:, 0])


class _Attention(nn.Module):
    """timm ``Attention`` names (``qkv``, ``proj``); same math as ``text.MultiHeadAttention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(((q * self.scale) @ k.transpose(-2, -1)).float(), dim=-1).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch, bias=False)  # bias-free under pre_norm

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTL14(nn.Module):
    """timm ``vit_large_patch14_clip_224``: ``norm_pre``, cls token with a position, linear head."""

    def __init__(self, cfg: ViTConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.dim)
        self.cls_token = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_patches + 1, cfg.dim))
        self.norm_pre = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.blocks = nn.Sequential(
            *[_Block(cfg.dim, cfg.heads, cfg.mlp_dim, cfg.ln_eps) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, embed_dim, bias=cfg.head_bias)
        with torch.no_grad():
            nn.init.normal_(self.cls_token, std=0.02)
            nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if x.shape[1] != self.num_patches:  # static shape check, resolved at trace time
            raise UsageError(
                f"ViT-L/14 expects {self.cfg.image_size}x{self.cfg.image_size} input "
                f"({self.num_patches} patches), got {x.shape[1]} patches"
            )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(self.norm_pre(x))
        return self.head(self.norm(x)[:, 0])


VIT_ENCODERS: dict[str, ViTConfig] = {
    "vit_b16": ViTConfig(stem_padding=1, ln_eps=1e-5, head_bias=False),
    "vit_base_mci_224": ViTConfig(stem_padding=0, ln_eps=1e-6, head_bias=True),
    "vit_l14": ViTConfig(dim=1024, depth=24, heads=16, mlp_dim=4096, patch_size=14, ln_eps=1e-5),
}


def build_vit(
    name: str, embed_dim: int, *, image_size: int = 224, reduced: bool = False, head_bias: bool | None = None
) -> nn.Module:
    """Build a ViT image network (incl. projection); ``reduced`` = 2 layers x 64 wide, same stem.

    ``head_bias`` None: the encoder's own head (Apple's ``vit_b16`` none, timm's with a bias).
    """
    if name not in VIT_ENCODERS:
        raise UnknownNameError("image encoder", name, sorted(VIT_ENCODERS))
    cfg = replace(VIT_ENCODERS[name], image_size=image_size)
    if head_bias is not None:
        cfg = replace(cfg, head_bias=head_bias)
    if reduced:
        cfg = replace(cfg, dim=64, depth=2, heads=4, mlp_dim=256)
    return ViTL14(cfg, embed_dim) if name == "vit_l14" else ViTB16(cfg, embed_dim)


__all__ = ["VIT_ENCODERS", "ConvAct", "ConvNormAct", "ViTB16", "ViTConfig", "ViTL14", "build_vit"]

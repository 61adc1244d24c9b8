"""Text encoders: the base pre-norm transformer (12L-512 / 12L-768) and MCt (MobileCLIP-S0).

Attribute names follow Apple's ``mobileclip/text_encoder.py`` so that ``text_encoder.*`` state_dict
keys load unchanged. Export-minded choices:
- attention is written out (matmul, softmax, matmul) with the softmax computed in fp32, so every
  converter sees the same small op set and fp16 graphs keep fp32 softmax semantics;
- the causal mask is a non-persistent buffer (moves with ``.to(device)``, never a CPU constant in a
  trace); non-causal variants have no mask at all (no key-padding mask, as in the reference);
- EOT pooling is ``argmax`` over the ids + index, which works for int32 and int64 ids;
- no Python branch depends on tensor values (only on static shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobileclip_export.errors import UnknownNameError, UsageError


@dataclass(frozen=True)
class TextConfig:
    width: int
    heads: int
    layers: int  # number of TransformerEncoder blocks (MCt: between its two RepMixer blocks)
    mlp_dim: int
    mct: bool = False  # wrap the transformer stack in RepMixer blocks (kernel (1, 11))
    repmixer_kernel: int = 11
    ln_eps: float = 1e-5


TEXT_ENCODERS: dict[str, TextConfig] = {
    "mct": TextConfig(width=512, heads=8, layers=4, mlp_dim=2048, mct=True),
    "base-512": TextConfig(width=512, heads=8, layers=12, mlp_dim=2048),
    "base-768": TextConfig(width=768, heads=12, layers=12, mlp_dim=3072),
}


def text_config(name: str, *, reduced: bool = False) -> TextConfig:
    """Config of a named text encoder; ``reduced`` keeps the block families but 2 layers x 128 wide."""
    if name not in TEXT_ENCODERS:
        raise UnknownNameError("text encoder", name, sorted(TEXT_ENCODERS))
    cfg = TEXT_ENCODERS[name]
    if reduced:
        cfg = replace(cfg, width=128, heads=4, layers=2, mlp_dim=512)
    return cfg


class MultiHeadAttention(nn.Module):
    """Self-attention with packed ``qkv_proj`` ([q; k; v], heads contiguous) and ``out_proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv_proj(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask.to(scores.dtype)
        # fp32 softmax (a no-op cast for fp32 graphs): fp16 softmax over 77 logits can overflow.
        attn = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)


class TransformerEncoder(nn.Module):
    """Pre-norm block: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))`` (cvnets ``TransformerEncoder`` names)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, ln_eps: float = 1e-5) -> None:
        super().__init__()
        # ModuleList (not Sequential) because the attention takes a mask; keys are the same.
        self.pre_norm_mha = nn.ModuleList(
            [nn.LayerNorm(dim, eps=ln_eps), MultiHeadAttention(dim, num_heads), nn.Dropout(0.0)]
        )
        self.pre_norm_ffn = nn.Sequential(
            nn.LayerNorm(dim, eps=ln_eps),
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        norm, mha, drop = self.pre_norm_mha
        x = x + drop(mha(norm(x), attn_mask))
        return x + self.pre_norm_ffn(x)


class _LearnablePosEmbed(nn.Module):
    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, 1, num_embeddings, dim))


class PositionalEmbedding(nn.Module):
    """Learned positions stored ``[1, 1, N, D]`` at ``pos_embed.pos_embed`` (Apple's nesting).

    ``forward(n)`` returns ``[1, n, D]``; a different ``n`` is bilinearly resampled as in the
    reference. ``n`` is a static shape, so the branch is resolved at trace time.
    """

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.pos_embed = _LearnablePosEmbed(num_embeddings, dim)

    def forward(self, n: int) -> Tensor:
        pe = self.pos_embed.pos_embed
        if n != self.num_embeddings:
            pe = F.interpolate(pe, size=(n, self.dim), mode="bilinear", align_corners=False)
        return pe.reshape(1, n, self.dim)


def _make_repmixer(dim: int, kernel: int, mlp_dim: int) -> nn.Module:
    """MCt's conv block on ``[B, D, 1, L]``: (1, k) dw mixer + ConvFFN; the mixer has no scale branch."""
    from mobileclip_export.models.blocks.repmixer import RepMixerBlock

    return RepMixerBlock(dim, kernel_size=(1, kernel), mlp_ratio=mlp_dim / dim, ffn_kernel_size=(1, kernel))


class TextTransformer(nn.Module):
    """Token ids ``[B, L]`` (int32/int64) -> unnormalized embedding ``[B, embed_dim]``."""

    def __init__(
        self,
        cfg: TextConfig,
        embed_dim: int,
        *,
        context_length: int = 77,
        vocab_size: int = 49408,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.cfg, self.embed_dim, self.context_length, self.causal = cfg, embed_dim, context_length, causal
        w = cfg.width
        self.embedding_layer = nn.Embedding(vocab_size, w)
        self.positional_embedding = PositionalEmbedding(context_length, w)
        blocks: list[nn.Module] = [
            TransformerEncoder(w, cfg.heads, cfg.mlp_dim, ln_eps=cfg.ln_eps) for _ in range(cfg.layers)
        ]
        if cfg.mct:
            blocks = [
                _make_repmixer(w, cfg.repmixer_kernel, cfg.mlp_dim),
                *blocks,
                _make_repmixer(w, cfg.repmixer_kernel, cfg.mlp_dim),
            ]
        self.transformer = nn.ModuleList(blocks)
        # Which layers are conv blocks working on [B, D, 1, L]; fixed here because reparameterization
        # may later swap the block types.
        self._conv_layers = frozenset({0, len(blocks) - 1} if cfg.mct else ())
        self.final_layer_norm = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.projection_layer = nn.Parameter(torch.empty(w, embed_dim))
        if causal:
            mask = torch.full((context_length, context_length), float("-inf")).triu(1)
            self.register_buffer("causal_mask", mask, persistent=False)
        else:
            self.causal_mask = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Apple's normal(0, width^-0.5) for the embeddings and projection; linears keep torch's init."""
        std = self.cfg.width**-0.5
        nn.init.normal_(self.embedding_layer.weight, std=std)
        nn.init.normal_(self.positional_embedding.pos_embed.pos_embed, std=std)
        nn.init.normal_(self.projection_layer, std=std)

    def forward_tokens(self, ids: Tensor) -> Tensor:
        """Per-position states after ``final_layer_norm``: ``[B, L, width]``."""
        n = ids.shape[-1]
        if self.causal_mask is not None and n > self.context_length:
            raise UsageError(f"token sequence of length {n} exceeds the context length {self.context_length}")
        x = self.embedding_layer(ids) + self.positional_embedding(n)
        mask = self.causal_mask
        if mask is not None and n != mask.shape[0]:
            # Slice only when needed: a no-op slice becomes an `alias` node that coremltools cannot convert.
            mask = mask[:n, :n]
        for i, layer in enumerate(self.transformer):
            if i in self._conv_layers:
                x = layer(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
            else:
                x = layer(x, mask)
        return self.final_layer_norm(x)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.forward_tokens(ids)
        eot = ids.argmax(dim=-1)  # EOT (49407) is the largest id in the vocabulary
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ self.projection_layer


def build_text_encoder(
    name: str,
    embed_dim: int,
    *,
    context_length: int = 77,
    vocab_size: int = 49408,
    causal: bool = False,
    reduced: bool = False,
) -> TextTransformer:
    cfg = text_config(name, reduced=reduced)
    return TextTransformer(
        cfg, embed_dim, context_length=context_length, vocab_size=vocab_size, causal=causal
    )


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "TEXT_ENCODERS",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "TextConfig",
    "TextTransformer",
    "TransformerEncoder",
    "build_text_encoder",
    "count_params",
    "text_config",
]

"""MCi image encoders (MobileCLIP's FastViT variants MCi0..MCi4), train-time form.

The module returned by ``build_mci`` is what Apple calls ``image_encoder.model``: its state_dict keys are
Apple's (``patch_embed.*``, ``network.N.*``, ``conv_exp.*``, ``head.*``). ``network`` is one flat ModuleList
in Apple order: for each stage, [RepCPE], blocks, then the PatchEmbed into the next stage, e.g. MCi0:
0 stage0 | 1 PatchEmbed | 2 stage1 | 3 PatchEmbed | 4 stage2 | 5 PatchEmbed | 6 RepCPE | 7 stage3.

MCi3/MCi4 come from timm/open_clip, where the names differ (stem/stages/final_conv/head.fc); we keep
Apple-style names for them too, and the Linear head is ``head.fc.weight``/``head.fc.bias`` (timm's key),
so a timm/open_clip checkpoint needs only the usual stem/stages -> patch_embed/network renames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from mobileclip_export.errors import UnknownNameError
from mobileclip_export.models.blocks.attention import AttentionBlock
from mobileclip_export.models.blocks.heads import GlobalPool2D, LinearPoolHead
from mobileclip_export.models.blocks.large_kernel import PatchEmbed
from mobileclip_export.models.blocks.mobileone import MobileOneBlock
from mobileclip_export.models.blocks.repcpe import RepCPE
from mobileclip_export.models.blocks.repmixer import RepMixerBlock


@dataclass(frozen=True)
class MCiConfig:
    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    mlp_ratio: float
    num_repmixer_stages: int  # the remaining stages are attention stages
    se_downsamples: tuple[bool, ...]  # per stage: does the PatchEmbed *into* this stage have SE
    pos_emb_stages: tuple[int, ...]  # stages preceded by a RepCPE
    attn_norm: str  # "batchnorm" | "layernorm"
    stem_scale_branch: bool
    linear_head: bool  # False: GlobalPool2D ``proj`` (Apple names); True: avg pool + Linear ``head.fc``


# MCi0-2 (Apple's FastViT-MCi): BatchNorm attention, SE in the last two downsamples, GlobalPool2D head.
_MCI_APPLE = dict(
    mlp_ratio=3.0,
    num_repmixer_stages=3,
    se_downsamples=(False, False, True, True),
    pos_emb_stages=(3,),
    attn_norm="batchnorm",
    stem_scale_branch=True,
    linear_head=False,
)
# MCi3/4 (timm/open_clip, MobileCLIP2): five stages, LayerNorm attention, no SE, Linear head.
_MCI_TIMM = dict(
    mlp_ratio=4.0,
    num_repmixer_stages=3,
    se_downsamples=(False,) * 5,
    pos_emb_stages=(3, 4),
    attn_norm="layernorm",
    stem_scale_branch=False,
    linear_head=True,
)

_CONFIGS: dict[str, MCiConfig] = {
    "mci0": MCiConfig(layers=(2, 6, 10, 2), embed_dims=(64, 128, 256, 512), **_MCI_APPLE),
    "mci1": MCiConfig(layers=(4, 12, 20, 4), embed_dims=(64, 128, 256, 512), **_MCI_APPLE),
    "mci2": MCiConfig(layers=(4, 12, 24, 4), embed_dims=(80, 160, 320, 640), **_MCI_APPLE),
    "mci3": MCiConfig(layers=(2, 12, 24, 4, 2), embed_dims=(96, 192, 384, 768, 1536), **_MCI_TIMM),
    "mci4": MCiConfig(layers=(2, 12, 24, 4, 4), embed_dims=(128, 256, 512, 1024, 2048), **_MCI_TIMM),
}


def mci_names() -> list[str]:
    return sorted(_CONFIGS)


def mci_config(name: str, *, reduced: bool = False) -> MCiConfig:
    """The variant's config; ``reduced`` keeps every block type but 1 block per stage and 1/4 the width."""
    try:
        cfg = _CONFIGS[name]
    except KeyError:
        raise UnknownNameError("MCi image encoder", name, mci_names()) from None
    if reduced:
        cfg = replace(cfg, layers=(1,) * len(cfg.layers), embed_dims=tuple(d // 4 for d in cfg.embed_dims))
    return cfg


def convolutional_stem(in_ch: int, out_ch: int, *, use_scale_branch: bool) -> nn.Sequential:
    """Stride-4 stem: 3x3/s2 conv, 3x3/s2 depthwise, 1x1 (each a MobileOneBlock with GELU)."""
    return nn.Sequential(
        MobileOneBlock(in_ch, out_ch, 3, stride=2, use_scale_branch=use_scale_branch),
        MobileOneBlock(out_ch, out_ch, 3, stride=2, groups=out_ch, use_scale_branch=use_scale_branch),
        MobileOneBlock(out_ch, out_ch, 1),
    )


class MCi(nn.Module):
    """FastViT-MCi trunk with its projection head: ``[B,3,H,W] -> [B, embed_dim]``."""

    def __init__(self, cfg: MCiConfig, embed_dim: int, *, head_bias: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.embed_dims
        self.patch_embed = convolutional_stem(3, dims[0], use_scale_branch=cfg.stem_scale_branch)
        network: list[nn.Module] = []
        for i, (depth, dim) in enumerate(zip(cfg.layers, dims, strict=True)):
            if i > 0:
                network.append(PatchEmbed(dims[i - 1], dim, use_se=cfg.se_downsamples[i]))
            if i in cfg.pos_emb_stages:
                network.append(RepCPE(dim))
            if i < cfg.num_repmixer_stages:
                blocks = [RepMixerBlock(dim, 3, cfg.mlp_ratio) for _ in range(depth)]
            else:
                blocks = [AttentionBlock(dim, cfg.mlp_ratio, norm=cfg.attn_norm) for _ in range(depth)]
            network.append(nn.Sequential(*blocks))
        self.network = nn.ModuleList(network)
        self.conv_exp = MobileOneBlock(dims[-1], 2 * dims[-1], 3, groups=dims[-1], use_se=True)
        head_cls = LinearPoolHead if cfg.linear_head else GlobalPool2D
        bias = cfg.linear_head if head_bias is None else head_bias
        self.head = head_cls(2 * dims[-1], embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for m in self.network:
            x = m(x)
        return self.head(self.conv_exp(x))


def build_mci(name: str, embed_dim: int, *, reduced: bool = False, head_bias: bool | None = None) -> MCi:
    """Train-time MCi encoder ``name`` ("mci0".."mci4") projecting to ``embed_dim``, randomly initialised.

    ``head_bias``: the projection has a bias (every MobileCLIP2 tower; Apple's v1 heads do not). None: the
    architecture's own head (MCi0-2 as Apple's, none; MCi3/4 as timm's, with one).
    """
    return MCi(mci_config(name, reduced=reduced), embed_dim, head_bias=head_bias)

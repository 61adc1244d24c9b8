"""Reparameterization rules: one per train-time block type, each a pure function module -> new module.

The registry applies them bottom-up on a deep copy, so a rule usually sees children already fused; each
rule also accepts unfused children (it fuses them itself) so it can be called directly in tests.
Rules never modify their input: new tensors are computed (``reparam/fuse.py``) and unchanged
sub-modules (SE, activations, fc1, LayerNorm2d, ...) are re-used by reference.
Inference-form classes have no rules, which makes the pass idempotent.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobileclip_export.models.blocks.attention import MHSA, AttentionBlock, FusedAttentionBlock
from mobileclip_export.models.blocks.convffn import ConvFFN, FusedConvFFN
from mobileclip_export.models.blocks.large_kernel import FusedLargeKernelConv, ReparamLargeKernelConv
from mobileclip_export.models.blocks.mobileone import FusedMobileOneBlock, MobileOneBlock
from mobileclip_export.models.blocks.repcpe import FusedRepCPE, RepCPE
from mobileclip_export.models.blocks.repmixer import (
    FusedRepMixer,
    FusedRepMixerBlock,
    RepMixer,
    RepMixerBlock,
)
from mobileclip_export.reparam import fuse
from mobileclip_export.reparam.registry import register_rule


def _conv_bn_kernel(branch: nn.Sequential, kernel_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    w, b = fuse.fuse_conv_bn(branch.conv.weight, branch.conv.bias, branch.bn)
    return fuse.pad_kernel_to(w, kernel_size), b


def mobileone_kernel_bias(m: MobileOneBlock) -> tuple[Tensor, Tensor]:
    """Single (W, b) equal to the sum of a MobileOneBlock's branches (before SE and activation)."""
    k = m.kernel_size
    ref = next(iter(m.parameters()))
    w = torch.zeros(m.out_channels, m.in_channels // m.groups, *k, dtype=ref.dtype, device=ref.device)
    b = torch.zeros(m.out_channels, dtype=ref.dtype, device=ref.device)
    for branch in m.rbr_conv:
        bw, bb = _conv_bn_kernel(branch, k)
        w, b = w + bw, b + bb
    if m.rbr_scale is not None:
        bw, bb = _conv_bn_kernel(m.rbr_scale, k)
        w, b = w + bw, b + bb
    if m.rbr_skip is not None:
        ident = fuse.identity_kernel(m.in_channels, m.groups, k, dtype=ref.dtype, device=ref.device)
        bw, bb = fuse.fuse_conv_bn(ident, None, m.rbr_skip)
        w, b = w + bw, b + bb
    return w, b


@register_rule(MobileOneBlock)
def fuse_mobileone(m: MobileOneBlock) -> FusedMobileOneBlock:
    """W = Σ_i fuse(W_conv_i, bn_i) + pad_k(fuse(W_1x1, bn_scale)) + fuse(I_k, bn_skip);  b = Σ of the biases.

    All branches share stride/groups and have centred ('same') padding, so the sum of convolutions is
    the convolution with the summed kernel. SE and activation follow the sum and are kept as they are.
    """
    w, b = mobileone_kernel_bias(m)
    conv = nn.Conv2d(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        groups=m.groups,
        bias=True,
        dtype=w.dtype,
        device=w.device,
    )
    conv = fuse.conv_from(conv, w, b)
    return FusedMobileOneBlock(conv, m.se, m.activation)


def _as_fused_mobileone(m: nn.Module) -> FusedMobileOneBlock:
    return fuse_mobileone(m) if isinstance(m, MobileOneBlock) else m  # type: ignore[return-value]


@register_rule(RepMixer)
def fuse_repmixer(m: RepMixer) -> FusedRepMixer:
    """x + ls·(mixer(x) − norm(x)) = conv(x; I + ls·(W_mixer − W_norm), ls·(b_mixer − b_norm)).

    ``mixer``/``norm`` are first fused to single depthwise convs (same kernel, stride 1); the identity
    is a depthwise identity kernel; ``layer_scale`` ([C,1,1]) scales the per-output-channel kernels.
    """
    mixer, norm = _as_fused_mobileone(m.mixer), _as_fused_mobileone(m.norm)
    mc, nc = mixer.reparam_conv, norm.reparam_conv
    ls = m.layer_scale.detach().reshape(-1)
    ident = fuse.identity_kernel(
        m.dim, mc.groups, mc.kernel_size, dtype=mc.weight.dtype, device=mc.weight.device
    )
    w = ident + ls.reshape(-1, 1, 1, 1) * (mc.weight.detach() - nc.weight.detach())
    b = ls * (mc.bias.detach() - nc.bias.detach())
    return FusedRepMixer(fuse.conv_from(mc, w, b))


@register_rule(ConvFFN)
def fuse_convffn(m: ConvFFN) -> FusedConvFFN:
    """conv → BN folds to one depthwise conv with bias: W' = W·γ/σ, b' = β − μ·γ/σ."""
    w, b = fuse.fuse_conv_bn(m.conv.conv.weight, m.conv.conv.bias, m.conv.bn)
    return FusedConvFFN(fuse.conv_from(m.conv.conv, w, b), m.fc1, m.fc2)


def _as_fused_convffn(m: nn.Module) -> FusedConvFFN:
    return fuse_convffn(m) if isinstance(m, ConvFFN) else m  # type: ignore[return-value]


def _ffn_with_output_scale(ffn: FusedConvFFN, scale: Tensor) -> FusedConvFFN:
    w, b = fuse.scale_output(ffn.fc2.weight, ffn.fc2.bias, scale)
    return FusedConvFFN(ffn.conv.conv, ffn.fc1, fuse.conv_from(ffn.fc2, w, b))


@register_rule(RepMixerBlock)
def fuse_repmixer_block(m: RepMixerBlock) -> FusedRepMixerBlock:
    """x + ls ⊙ fc2(h) = x + (diag(ls)·W2) h + ls ⊙ b2: the FFN layer scale folds into ``convffn.fc2``."""
    mixer = fuse_repmixer(m.token_mixer) if isinstance(m.token_mixer, RepMixer) else m.token_mixer
    ffn = _ffn_with_output_scale(_as_fused_convffn(m.convffn), m.layer_scale)
    return FusedRepMixerBlock(mixer, ffn)


@register_rule(ReparamLargeKernelConv)
def fuse_large_kernel(m: ReparamLargeKernelConv) -> FusedLargeKernelConv:
    """W = fuse(W_7x7, bn_lk) + pad_7(fuse(W_3x3, bn_small)), b = b_lk + b_small (same stride, groups)."""
    k = m.lkb_origin.conv.kernel_size
    w, b = _conv_bn_kernel(m.lkb_origin, k)
    if m.small_conv is not None:
        sw, sb = _conv_bn_kernel(m.small_conv, k)
        w, b = w + sw, b + sb
    return FusedLargeKernelConv(fuse.conv_from(m.lkb_origin.conv, w, b), m.se, m.activation)


@register_rule(RepCPE)
def fuse_repcpe(m: RepCPE) -> FusedRepCPE:
    """x + pe(x) = conv(x; I + W_pe, b_pe) with I the depthwise identity kernel (groups = C)."""
    pe = m.pe
    ident = fuse.identity_kernel(
        pe.in_channels, pe.groups, pe.kernel_size, dtype=pe.weight.dtype, device=pe.weight.device
    )
    return FusedRepCPE(fuse.conv_from(pe, ident + pe.weight.detach(), pe.bias.detach()))


@register_rule(AttentionBlock)
def fuse_attention_block(m: AttentionBlock) -> FusedAttentionBlock:
    """Fold the pre-attention BN into qkv, and both layer scales into the projections before them.

    - BN (eval) is x → a⊙x + c per channel; qkv(a⊙x + c) = (W·diag(a)) x + W c, so qkv gains a bias.
      A channel LayerNorm (MCi3/4) is not affine in x and stays.
    - x + ls1 ⊙ proj(y) = x + (diag(ls1)·W_p) y + ls1 ⊙ b_p; likewise ls2 into ``convffn.fc2``.
    """
    attn: MHSA = m.token_mixer
    qkv_w, qkv_b = attn.qkv.weight.detach(), None if attn.qkv.bias is None else attn.qkv.bias.detach()
    norm: nn.Module = m.norm
    if isinstance(norm, nn.BatchNorm2d):
        scale, shift = fuse.bn_affine(norm)
        qkv_w, qkv_b = fuse.fold_input_affine(qkv_w, qkv_b, scale, shift)
        norm = nn.Identity()
    proj_w, proj_b = fuse.scale_output(attn.proj.weight, attn.proj.bias, m.layer_scale_1)
    new_attn = MHSA(attn.dim, attn.head_dim, qkv_bias=qkv_b is not None)
    new_attn.qkv = fuse.linear_from(qkv_w, qkv_b)
    new_attn.proj = fuse.linear_from(proj_w, proj_b)
    ffn = _ffn_with_output_scale(_as_fused_convffn(m.convffn), m.layer_scale_2)
    return FusedAttentionBlock(norm, new_attn, ffn)

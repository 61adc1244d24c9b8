"""ViT-B/16 (conv stem, Apple names) and ViT-L/14 (timm names): structure, counts, stem fold parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mobileclip_export.models.clip  # noqa: F401,E402  (registers the ViT stem rule, as create_model does)
from mobileclip_export.errors import UnknownNameError
from mobileclip_export.models.vit import ConvAct, ConvNormAct, build_vit
from mobileclip_export.reparam import registered_rules, reparameterize_model
from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales, train_time_leftovers


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def vit_block_params(d: int, mlp: int) -> int:
    return 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)


def build(name: str, *, reduced: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_vit(name, 768 if name == "vit_l14" else 512, reduced=reduced).eval()


def test_stem_rule_is_registered():
    assert ConvNormAct in registered_rules()


def test_vit_b16_counts_and_keys():
    with torch.device("meta"):
        m = build_vit("vit_b16", 512)
    stem = (4 * 4 * 3 * 192 + 2 * 192) + (2 * 2 * 192 * 192 + 2 * 192) + (2 * 2 * 192 * 768 + 768)
    expected = stem + 12 * vit_block_params(768, 3072) + 196 * 768 + 768 + 2 * 768 + 768 * 512
    assert n_params(m) == expected == 86_348_544
    rep = reparameterize_model(m)
    assert n_params(rep) == expected - 2 * 192  # each BN (γ, β) becomes one conv bias
    assert abs(n_params(rep) / 1e6 - 86.3) < 0.1
    sd = m.state_dict()
    assert len(sd) == 163  # Apple's B image keys: 313 total - 149 text - logit_scale
    assert sd["patch_emb.0.block.conv.weight"].shape == (192, 3, 4, 4)
    assert "patch_emb.0.block.conv.bias" not in sd
    assert "patch_emb.1.block.norm.running_var" in sd
    assert sd["patch_emb.2.block.conv.bias"].shape == (768,)
    assert sd["pos_embed.pos_embed.pos_embed"].shape == (1, 1, 196, 768)
    assert sd["cls_token"].shape == (1, 1, 768)
    assert sd["classifier.proj"].shape == (768, 512)
    assert "transformer.11.pre_norm_ffn.4.bias" in sd and "post_transformer_norm.weight" in sd
    rsd = rep.state_dict()
    assert rsd["patch_emb.0.block.conv.bias"].shape == (192,)
    assert not any(".norm." in k for k in rsd)


def test_vit_l14_counts_and_timm_keys():
    with torch.device("meta"):
        m = build_vit("vit_l14", 768)
    d = 1024
    expected = 14 * 14 * 3 * d + d + 257 * d + 2 * d + 24 * vit_block_params(d, 4096) + 2 * d + d * 768 + 768
    assert n_params(m) == expected == 303_966_976
    # The model tables say 304.3M; that is 327,680 = (577 - 257) * 1024 more, i.e. the count of the
    # 336-px ViT-L/14 position table. The 224-px timm structure (pos_embed [1, 257, 1024]) is 303.97M.
    assert abs(expected / 1e6 - 304.3) < 0.35
    sd = m.state_dict()
    assert "patch_embed.proj.bias" not in sd and sd["patch_embed.proj.weight"].shape == (d, 3, 14, 14)
    assert sd["pos_embed"].shape == (1, 257, d) and sd["cls_token"].shape == (1, 1, d)
    for k in (
        "norm_pre.weight",
        "blocks.23.attn.qkv.bias",
        "blocks.23.attn.proj.weight",
        "blocks.0.norm1.bias",
        "blocks.0.norm2.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
    ):
        assert k in sd
    assert sd["head.weight"].shape == (768, d) and sd["head.bias"].shape == (768,)
    assert train_time_leftovers(reparameterize_model(m)) == []


def test_stem_padding_per_variant():
    a = build_vit("vit_b16", 512, reduced=True)
    b = build_vit("vit_base_mci_224", 512, reduced=True, head_bias=False)  # same head: the stems differ
    assert a.patch_emb[0].block.conv.padding == (1, 1)  # Apple ConvNormAct: int((k - 1) / 2)
    assert b.patch_emb[0].block.conv.padding == (0, 0)  # timm vit_base_mci_224
    assert a.post_transformer_norm.eps == 1e-5 and b.post_transformer_norm.eps == 1e-6
    b.load_state_dict(a.state_dict())  # identical key sets and shapes ...
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        diff = (a.eval()(x) - b.eval()(x)).abs().max().item()
    assert diff > 1e-4  # ... but a one-pixel grid shift, so different numbers


def test_positions_added_before_cls_token():
    m = build("vit_b16")
    captured = {}
    m.transformer[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        m(x)
        patches = m.patch_emb(x).flatten(2).transpose(1, 2)
    seq = captured["x"]
    assert seq.shape == (2, 197, 64)
    assert torch.equal(seq[:, 0], m.cls_token[0].expand(2, -1))  # the cls token carries no position
    assert torch.allclose(seq[:, 1:], patches + m.pos_embed.pos_embed.pos_embed[0], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "reduced"), [("vit_b16", False), ("vit_base_mci_224", True), ("vit_b16", True)]
)
def test_stem_fold_parity(name, reduced):
    m = randomize_bn_and_layer_scales(build(name, reduced=reduced), 1)
    rep = reparameterize_model(m)
    assert train_time_leftovers(rep) == []
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in rep.modules())
    assert all(isinstance(s, ConvAct) for s in rep.patch_emb)
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())  # input untouched
    x = torch.rand(1 if not reduced else 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = m(x), rep(x)
        if reduced:
            assert torch.equal(reparameterize_model(rep)(x), b)  # idempotent
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert rel < 1e-5
    assert F.cosine_similarity(a, b).min().item() > 0.999999


def test_randomized_stem_bn_changes_output():
    """Guards the parity test: the randomized BN statistics really reach the output."""
    m = build("vit_b16")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        before = m(x)
        after = randomize_bn_and_layer_scales(m, 2)(x)
    assert (before - after).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["vit_b16", "vit_l14"])
def test_forward_shape_and_export(name):
    m = reparameterize_model(build(name))
    x = torch.rand(1, 3, 224, 224)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(ep.module()(x), ref, atol=1e-5)
    assert ref.shape == (1, 768 if name == "vit_l14" else 512)


@pytest.mark.slow
def test_vit_l14_full_forward():
    m = build("vit_l14", reduced=False)
    with torch.no_grad():
        out = m(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 768) and torch.isfinite(out).all()


def test_unknown_vit():
    with pytest.raises(UnknownNameError, match="vit_b16"):
        build_vit("vit_h14", 512)

"""Text encoders: Apple key layout, parameter counts, reparameterization parity, int32 ids, masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobileclip_export.errors import UnknownNameError, UsageError
from mobileclip_export.models.text import TextTransformer, build_text_encoder, text_config
from mobileclip_export.reparam import reparameterize_model
from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales, train_time_leftovers

SOT, EOT = 49406, 49407


def make_ids(batch: int = 3, seed: int = 0, length: int = 77) -> torch.Tensor:
    """Zero-padded [SOT, tokens..., EOT, 0...] rows of different lengths (one full row)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, length, dtype=torch.int64)
    for i in range(batch):
        n = length - 2 if i == batch - 1 else int(torch.randint(3, 40, (1,), generator=g))
        ids[i, 0] = SOT
        ids[i, 1 : n + 1] = torch.randint(1, SOT, (n,), generator=g)
        ids[i, n + 1] = EOT
    return ids


def build(
    name: str, *, causal: bool = False, reduced: bool = True, seed: int = 0, embed: int = 512
) -> TextTransformer:
    torch.manual_seed(seed)
    return build_text_encoder(name, embed, causal=causal, reduced=reduced).eval()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def base_text_params(width: int, mlp: int, layers: int, embed: int, vocab: int = 49408, ctx: int = 77) -> int:
    per_layer = 2 * width + (width * 3 * width + 3 * width) + (width * width + width) + 2 * width
    per_layer += (width * mlp + mlp) + (mlp * width + width)
    return vocab * width + ctx * width + layers * per_layer + 2 * width + width * embed


# ---------------------------------------------------------------- structure and parameter counts


@pytest.mark.parametrize(
    ("name", "embed", "train_count", "reparam_count", "published_m"),
    [
        ("mct", 512, 42_441_216, 42_433_024, 42.4),
        ("base-512", 512, base_text_params(512, 2048, 12, 512), base_text_params(512, 2048, 12, 512), 63.4),
        ("base-768", 768, base_text_params(768, 3072, 12, 768), base_text_params(768, 3072, 12, 768), 123.6),
    ],
)
def test_param_counts_match_reference(name, embed, train_count, reparam_count, published_m):
    with torch.device("meta"):  # counts only: no allocation, no init
        enc = build_text_encoder(name, embed)
    rep = reparameterize_model(enc)
    assert n_params(enc) == train_count
    assert n_params(rep) == reparam_count
    assert abs(reparam_count / 1e6 - published_m) < 0.1
    assert train_time_leftovers(rep) == []


def test_base_keys_are_apples():
    with torch.device("meta"):
        enc = build_text_encoder("base-512", 512)
    sd = enc.state_dict()
    assert len(sd) == 149  # 1 + 1 + 12 * 12 + 2 + 1
    assert sd["embedding_layer.weight"].shape == (49408, 512)
    assert sd["positional_embedding.pos_embed.pos_embed"].shape == (1, 1, 77, 512)
    assert sd["transformer.11.pre_norm_mha.1.qkv_proj.weight"].shape == (1536, 512)
    assert sd["transformer.11.pre_norm_mha.1.out_proj.bias"].shape == (512,)
    assert sd["transformer.0.pre_norm_ffn.1.weight"].shape == (2048, 512)
    assert sd["transformer.0.pre_norm_ffn.4.weight"].shape == (512, 2048)
    assert {"final_layer_norm.weight", "final_layer_norm.bias", "projection_layer"} <= set(sd)
    assert sd["projection_layer"].shape == (512, 512)
    assert "causal_mask" not in sd


def test_mct_keys_are_apples():
    with torch.device("meta"):
        enc = build_text_encoder("mct", 512)
    sd = enc.state_dict()
    assert len(enc.transformer) == 6
    for i in (0, 5):
        p = f"transformer.{i}."
        assert sd[p + "layer_scale"].shape == (512, 1, 1)
        assert sd[p + "token_mixer.layer_scale"].shape == (512, 1, 1)
        assert sd[p + "token_mixer.mixer.rbr_conv.0.conv.weight"].shape == (512, 1, 1, 11)
        assert p + "token_mixer.mixer.rbr_skip.running_var" in sd
        assert p + "token_mixer.norm.rbr_skip.weight" in sd
        assert sd[p + "convffn.conv.conv.weight"].shape == (512, 1, 1, 11)
        assert sd[p + "convffn.fc1.weight"].shape == (2048, 512, 1, 1)
        assert not any(k.startswith(p) and "rbr_scale" in k for k in sd)  # kernel (1, 11): no scale branch
    for i in (1, 4):
        assert f"transformer.{i}.pre_norm_mha.1.qkv_proj.weight" in sd


def test_unknown_text_encoder():
    with pytest.raises(UnknownNameError, match="base-512"):
        text_config("base-1024")


# ---------------------------------------------------------------- reparameterization parity


def _parity(enc: TextTransformer, seed: int) -> tuple[float, float, float]:
    randomize_bn_and_layer_scales(enc, seed)
    rep = reparameterize_model(enc)
    assert train_time_leftovers(rep) == []
    ids = make_ids(2, seed)
    with torch.no_grad():
        a, b = enc(ids), rep(ids)
    diff = (a - b).abs().max().item()
    return diff, diff / a.abs().max().item(), F.cosine_similarity(a, b).min().item()


@pytest.mark.parametrize(
    ("name", "embed", "causal"),
    [("mct", 512, False), ("base-512", 512, True), ("base-768", 768, False)],
    ids=["s0-mct", "b-causal", "s4-768"],
)
def test_reparam_parity_full_size(name, embed, causal):
    enc = build(name, causal=causal, reduced=False, embed=embed)
    diff, rel, cos = _parity(enc, seed=1)
    assert rel < 1e-5, diff
    assert cos > 0.999999


@pytest.mark.parametrize(("name", "causal"), [("mct", False), ("base-512", True), ("base-768", False)])
def test_reparam_parity_reduced(name, causal):
    diff, rel, cos = _parity(build(name, causal=causal), seed=2)
    assert rel < 1e-5, diff
    assert cos > 0.999999


def test_mct_randomized_bn_actually_matters():
    """Guards the parity test: with random BN/layer scales the conv blocks change the output."""
    enc = build("mct")
    ids = make_ids()
    with torch.no_grad():
        before = enc(ids)
        randomize_bn_and_layer_scales(enc, 3)
        after = enc(ids)
    assert (before - after).abs().max() > 1e-2


def test_reparam_does_not_mutate_and_is_idempotent():
    enc = randomize_bn_and_layer_scales(build("mct"), 4)
    rep = reparameterize_model(enc)
    rep2 = reparameterize_model(rep)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert rep.state_dict().keys() == rep2.state_dict().keys()
    ids = make_ids()
    with torch.no_grad():
        assert torch.equal(rep(ids), rep2(ids))


# ---------------------------------------------------------------- ids dtype, pooling, masking


@pytest.mark.parametrize(
    ("name", "causal", "reduced"), [("mct", False, True), ("base-512", True, True), ("base-512", True, False)]
)
def test_int32_and_int64_ids_identical(name, causal, reduced):
    enc = build(name, causal=causal, reduced=reduced)
    ids = make_ids(2, 5)
    with torch.no_grad():
        a = enc(ids)
        b = enc(ids.to(torch.int32))
    assert torch.equal(a, b)


def test_eot_pooling_takes_argmax_position():
    enc = build("base-512")
    ids = make_ids(3, 6)
    with torch.no_grad():
        tokens = enc.forward_tokens(ids)
        pooled = enc(ids)
    eot_pos = (ids == EOT).int().argmax(-1)
    expected = tokens[torch.arange(3), eot_pos] @ enc.projection_layer
    assert torch.allclose(pooled, expected, atol=1e-6)


@pytest.mark.parametrize(("name", "causal"), [("base-512", True), ("base-512", False), ("mct", False)])
def test_causal_mask_effect(name, causal):
    enc = build(name, causal=causal)
    ids = make_ids(1, 7)
    ids2 = ids.clone()
    ids2[0, 30] = 1234  # change a later position (inside the zero padding)
    with torch.no_grad():
        a, b = enc.forward_tokens(ids), enc.forward_tokens(ids2)
    earlier = (a[:, :30] - b[:, :30]).abs().max().item()
    assert (a[:, 30:] - b[:, 30:]).abs().max().item() > 1e-3
    if causal:
        assert earlier == 0.0
    else:
        assert earlier > 1e-4  # bidirectional, no key-padding mask: pads matter (as in the reference)


def test_causal_mask_is_a_moving_nonpersistent_buffer():
    enc = build("base-512", causal=True)
    assert "causal_mask" in dict(enc.named_buffers())
    assert "causal_mask" not in enc.state_dict()
    assert enc.to(torch.float64).causal_mask.dtype == torch.float64
    assert enc.to("meta").causal_mask.device.type == "meta"
    assert build("base-512", causal=False).causal_mask is None


def test_causal_context_overflow_is_a_usage_error():
    enc = build("base-512", causal=True)
    with pytest.raises(UsageError, match="context length 77"):
        enc(torch.zeros(1, 78, dtype=torch.int64))


@pytest.mark.parametrize(("name", "causal"), [("mct", False), ("base-512", True)])
def test_torch_export_int32_matches_eager(name, causal):
    """No data-dependent control flow: torch.export traces it and the program matches eager."""
    enc = reparameterize_model(randomize_bn_and_layer_scales(build(name, causal=causal), 8))
    ids = make_ids(2, 8).to(torch.int32)
    ep = torch.export.export(enc, (ids,))
    other = make_ids(2, 9).to(torch.int32)  # different EOT positions than the traced example
    with torch.no_grad():
        assert torch.allclose(ep.module()(other), enc(other), atol=1e-5, rtol=0)
    if causal:
        assert "causal_mask" in ep.graph_signature.buffers_to_mutate.values() or any(
            "causal_mask" in b for b in ep.graph_signature.non_persistent_buffers
        )

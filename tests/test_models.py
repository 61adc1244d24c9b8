"""Registry, specs and create_model: names, preprocessing facts, seeded init, wrappers, reduced models."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from mobileclip_export.errors import CheckpointError, UnknownNameError, UsageError
from mobileclip_export.models import MobileCLIP, ModelSpec, create_model, get_model_spec, list_models
from mobileclip_export.models.spec import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mobileclip_export.models.text import build_text_encoder
from mobileclip_export.models.vit import build_vit
from mobileclip_export.reparam import reparameterize_model
from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales, train_time_leftovers

ALL = [
    *(f"mobileclip2_{v}" for v in ("b", "l14", "s0", "s2", "s3", "s4")),
    *(f"mobileclip_{v}" for v in ("b", "blt", "l14", "s0", "s1", "s2", "s3", "s4")),
]
OPENAI_NORM = {
    "mobileclip_s3",
    "mobileclip_s4",
    "mobileclip_l14",
    "mobileclip2_s3",
    "mobileclip2_s4",
    "mobileclip2_l14",
}


def test_list_models():
    assert list_models() == ALL


def test_unknown_model_lists_choices():
    with pytest.raises(UnknownNameError) as err:
        get_model_spec("mobileclip_s9")
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    assert err.value.choices == ALL
    assert "mobileclip_s9" in str(err.value) and "mobileclip2_s4" in str(err.value)
    with pytest.raises(UnknownNameError):
        create_model("nope")


@pytest.mark.parametrize("name", ALL)
def test_spec_facts(name):
    s = get_model_spec(name)
    assert isinstance(s, ModelSpec) and s.name == name and s.context_length == 77
    pre = s.preprocessing
    assert pre.resize == pre.crop == s.image_size and pre.resize_mode == "shortest"
    assert s.image_size == (224 if s.image_encoder.startswith("vit") else 256)
    if name in OPENAI_NORM:
        assert pre.mean == OPENAI_CLIP_MEAN and pre.std == OPENAI_CLIP_STD
    else:
        assert pre.is_identity_normalization
    assert pre.interpolation == ("bicubic" if name.endswith("l14") else "bilinear")
    assert s.causal_text == (name in {"mobileclip_b", "mobileclip_blt", "mobileclip2_b"})
    assert (s.text_encoder == "mct") == (name == "mobileclip_s0")
    assert s.embed_dim == (768 if s.text_encoder == "base-768" else 512)
    assert s.published.params_text_m == {"mct": 42.4, "base-512": 63.4, "base-768": 123.6}[s.text_encoder]
    assert ModelSpec.from_dict(s.to_dict()) == s


# Apple's v1 heads (GlobalPool2D ``head.proj``, cvnets ``classifier.proj``) have no bias; every other tower is
# defined in timm/open_clip (``timm_proj: null``: timm's classifier Linear, with a bias, is the projection).
V1_APPLE_HEADS = {"mobileclip_s0", "mobileclip_s1", "mobileclip_s2", "mobileclip_b", "mobileclip_blt"}


@pytest.mark.parametrize("name", ALL)
def test_image_head_bias_follows_the_published_tower(name):
    from mobileclip_export.models.checkpoint.keymaps import image_head_keys

    spec = get_model_spec(name)
    assert spec.image_head_bias == (name not in V1_APPLE_HEADS)
    with torch.device("meta"):
        m = create_model(name)
    weight, bias = image_head_keys(m.state_dict())
    assert (bias is not None) == spec.image_head_bias, (weight, bias)


def test_readme_model_table_counts():
    """docs/models.md's Models table: head bias and parameter counts recounted from the built models."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    rows = [ln for ln in readme.splitlines() if ln.startswith("| `mobileclip")]
    seen = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            seen.add(name)
            with torch.device("meta"):
                m = reparameterize_model(create_model(name))
            img, txt = (sum(p.numel() for p in e.parameters()) for e in (m.image_encoder, m.text_encoder))
            assert cells[9] == f"{img / 1e6:.6f} + {txt / 1e6:.6f}", (name, cells[9])
            assert cells[2] == (f"yes ({m.embed_dim})" if m.spec.image_head_bias else "no"), name
    assert seen == set(ALL)


def test_vit_b_stem_variants():
    assert get_model_spec("mobileclip_b").image_encoder == "vit_b16"  # Apple padding 1
    assert get_model_spec("mobileclip_blt").image_encoder == "vit_b16"
    assert get_model_spec("mobileclip2_b").image_encoder == "vit_base_mci_224"  # timm padding 0


def test_create_model_contract(caplog):
    with caplog.at_level(logging.WARNING):
        m = create_model("mobileclip_s0", reduced=True, seed=3)
    assert isinstance(m, MobileCLIP) and not m.training
    assert m.random_init and m.seed == 3 and m.checkpoint_sha256 is None
    assert any(r.levelno == logging.WARNING and "random" in r.getMessage() for r in caplog.records)
    assert m.logit_scale.shape == () and m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert (m.image_size, m.context_length, m.embed_dim) == (256, 77, 512)
    assert m.spec is get_model_spec("mobileclip_s0")
    tops = {
        k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("image_encoder") else "")
        for k in m.state_dict()
    }
    assert tops == {"logit_scale", "image_encoder.model", "text_encoder"}


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = create_model("mobileclip_b", reduced=True, seed=7).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = create_model("mobileclip_b", reduced=True, seed=7).state_dict()
    c = create_model("mobileclip_b", reduced=True, seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["text_encoder.embedding_layer.weight"], c["text_encoder.embedding_layer.weight"])
    assert not torch.equal(a["image_encoder.model.cls_token"], c["image_encoder.model.cls_token"])


@pytest.mark.parametrize("name", ["mobileclip_s3", "mobileclip_l14", "mobileclip_s0"])
def test_image_encoder_normalization(name):
    m = randomize_bn_and_layer_scales(create_model(name, reduced=True), 0)  # make the output input-sensitive
    enc = m.image_encoder
    x = torch.rand(1, 3, m.image_size, m.image_size)
    assert "image_encoder.mean" not in m.state_dict() and "image_encoder.std" not in m.state_dict()
    with torch.no_grad():
        out = enc(x)
        if name == "mobileclip_s0":
            assert enc.mean is None and enc.std is None
            assert torch.equal(out, enc.model(x))
        else:
            mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
            assert torch.allclose(enc.mean, mean) and torch.allclose(enc.std, std)
            assert torch.allclose(out, enc.model((x - mean) / std), atol=1e-6)
            assert (out - enc.model(x)).abs().max() > 1e-3 * out.abs().max()  # normalization is not a no-op


@pytest.mark.parametrize("name", ALL)
def test_reduced_models_run_and_reparameterize(name):
    """Every registry entry, reduced: shapes, inference form, parity with randomized BN/layer scales."""
    m = randomize_bn_and_layer_scales(create_model(name, reduced=True, seed=1), 1)
    rep = reparameterize_model(m)
    assert train_time_leftovers(rep) == []
    x = torch.rand(2, 3, m.image_size, m.image_size, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(2, 77, dtype=torch.int64)
    ids[:, 0], ids[0, 1:6], ids[0, 6], ids[1, 1:76], ids[1, 76] = 49406, 320, 49407, 1000, 49407
    with torch.no_grad():
        img, txt, scale = m(x, ids)
        img2, txt2, _ = rep(x, ids.to(torch.int32))
    assert img.shape == txt.shape == (2, m.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and scale.item() == pytest.approx(
        1 / 0.07, rel=1e-5
    )
    assert F.cosine_similarity(img, img2).min() > 0.99999 and F.cosine_similarity(txt, txt2).min() > 0.99999
    assert (img - img2).abs().max() < 1e-4 and (txt - txt2).abs().max() < 1e-4


def test_meta_param_counts_against_published():
    """Reparameterized text and ViT-B towers of every entry: within 0.1M of the tables (ViT-L: test_vit)."""
    for name in ALL:
        spec = get_model_spec(name)
        with torch.device("meta"):
            text = build_text_encoder(spec.text_encoder, spec.embed_dim, causal=spec.causal_text)
            image = (
                build_vit(spec.image_encoder, spec.embed_dim)
                if spec.image_encoder.startswith("vit_b")
                else None
            )
        text_m = sum(p.numel() for p in reparameterize_model(text).parameters()) / 1e6
        assert abs(text_m - spec.published.params_text_m) < 0.1, (name, text_m)
        if image is not None:
            img_m = sum(p.numel() for p in reparameterize_model(image).parameters()) / 1e6
            assert abs(img_m - spec.published.params_image_m) < 0.1, (name, img_m)


def test_checkpoint_round_trip(tmp_path):
    src = create_model("mobileclip_b", reduced=True, seed=11)
    path = tmp_path / "b.pt"
    torch.save(src.state_dict(), path)
    m = create_model("mobileclip_b", checkpoint=path, reduced=True, seed=0)
    assert not m.random_init and m.checkpoint_sha256 and len(m.checkpoint_sha256) == 64
    sd = m.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in src.state_dict().items())


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        create_model("mobileclip_s0", checkpoint=tmp_path / "absent.pt", reduced=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_full_size_reparam_parity(name):
    m = randomize_bn_and_layer_scales(create_model(name, seed=1), 1)
    rep = reparameterize_model(m)
    assert train_time_leftovers(rep) == []
    x = torch.rand(1, 3, m.image_size, m.image_size, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(1, 77, dtype=torch.int64)
    ids[0, 0], ids[0, 1:9], ids[0, 9] = 49406, 4000, 49407
    with torch.no_grad():
        pairs = [(m.encode_image(x), rep.encode_image(x)), (m.encode_text(ids), rep.encode_text(ids.int()))]
    for a, b in pairs:
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4
        assert F.cosine_similarity(a, b).min().item() > 0.99999

"""MCi0..MCi4: parameter counts, Apple key names, train vs reparameterized parity, export-friendly forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileclip_export.errors import UnknownNameError
from mobileclip_export.models.blocks.attention import AttentionBlock, LayerNorm2d
from mobileclip_export.models.blocks.large_kernel import ReparamLargeKernelConv
from mobileclip_export.models.blocks.mobileone import MobileOneBlock
from mobileclip_export.models.blocks.repcpe import RepCPE
from mobileclip_export.models.blocks.repmixer import RepMixerBlock
from mobileclip_export.models.blocks.squeeze_excite import SEBlock, SqueezeExcite
from mobileclip_export.models.mci import build_mci, mci_names
from mobileclip_export.reparam import reparameterize_model
from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales, train_time_leftovers

EMBED = {"mci0": 512, "mci1": 512, "mci2": 512, "mci3": 768, "mci4": 768}
# (reference train-time count, README-published reparameterized count), millions
PARAMS_M = {
    "mci0": (11.406, 11.4),
    "mci1": (21.541, 21.5),
    "mci2": (35.815, 35.7),
    "mci3": (125.24, 125.1),
    "mci4": (321.78, 321.6),
}


def _params_m(m: nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def _parity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = F.cosine_similarity(a, b).min().item()
    rel = ((a - b).abs().max() / a.abs().max()).item()
    return cos, rel


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_param_counts(name: str) -> None:
    with torch.device("meta"):  # counts only: no memory, no init time
        model = build_mci(name, EMBED[name])
    fused = reparameterize_model(model)
    train_ref, published = PARAMS_M[name]
    assert abs(_params_m(model) - train_ref) < 0.005, _params_m(model)
    assert abs(_params_m(fused) - published) < 0.1, _params_m(fused)
    assert train_time_leftovers(fused) == []


def test_apple_key_names_mci0() -> None:
    with torch.device("meta"):
        model = build_mci("mci0", 512)
    sd = model.state_dict()
    for key in [
        "patch_embed.0.rbr_conv.0.conv.weight",
        "patch_embed.0.rbr_scale.bn.running_var",
        "patch_embed.2.rbr_skip.running_mean",
        "patch_embed.2.rbr_conv.0.bn.weight",
        "network.0.0.layer_scale",
        "network.0.0.token_mixer.layer_scale",
        "network.0.0.token_mixer.norm.rbr_skip.weight",
        "network.0.0.token_mixer.mixer.rbr_scale.conv.weight",
        "network.0.0.convffn.conv.conv.weight",
        "network.0.0.convffn.conv.bn.running_mean",
        "network.0.0.convffn.fc2.bias",
        "network.1.proj.0.lkb_origin.conv.weight",
        "network.1.proj.0.small_conv.bn.weight",
        "network.3.proj.0.se.fc1.weight",
        "network.5.proj.0.se.fc2.bias",
        "network.1.proj.1.rbr_skip.weight",
        "network.6.pe.weight",
        "network.6.pe.bias",
        "network.7.0.layer_scale_1",
        "network.7.0.norm.running_var",
        "network.7.0.token_mixer.qkv.weight",
        "network.7.0.token_mixer.proj.bias",
        "conv_exp.rbr_scale.conv.weight",
        "conv_exp.se.reduce.weight",
        "conv_exp.se.expand.bias",
        "head.proj",
    ]:
        assert key in sd, key
    assert not any(k.startswith("network.1.proj.0.se.") for k in sd)  # no SE going into stage 1
    assert "network.7.0.token_mixer.qkv.bias" not in sd
    assert "patch_embed.2.rbr_scale.conv.weight" not in sd  # 1x1 block: no scale branch
    assert sd["head.proj"].shape == (1024, 512)
    assert sd["network.7.0.layer_scale_1"].shape == (512, 1, 1)
    assert sd["network.7.0.token_mixer.qkv.weight"].shape == (1536, 512)  # 16 heads x 32
    fused = reparameterize_model(model).state_dict()
    for key in [
        "patch_embed.0.reparam_conv.weight",
        "network.1.proj.0.lkb_reparam.weight",
        "network.0.0.token_mixer.reparam_conv.bias",
        "network.6.reparam_conv.weight",
        "conv_exp.reparam_conv.weight",
        "conv_exp.se.reduce.weight",
        "head.proj",
    ]:
        assert key in fused, key


def test_apple_style_key_names_mci3() -> None:
    with torch.device("meta"):
        model = build_mci("mci3", 768)
    sd = model.state_dict()
    assert sd["head.fc.weight"].shape == (768, 3072) and sd["head.fc.bias"].shape == (768,)
    assert "network.6.pe.weight" in sd and "network.9.pe.weight" in sd  # RepCPE before stages 3 and 4
    assert "network.7.0.norm.weight" in sd and "network.7.0.norm.running_mean" not in sd  # channel LayerNorm
    assert "patch_embed.0.rbr_scale.conv.weight" not in sd  # stem without scale branch
    assert not any(".se." in k for k in sd if k.startswith("network."))  # no SE in downsamples
    assert "conv_exp.se.reduce.weight" in sd
    assert sum(isinstance(m, LayerNorm2d) for m in model.modules()) == 6


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_reduced_has_every_block_type(name: str) -> None:
    model = build_mci(name, EMBED[name], reduced=True)
    types = {type(m) for m in model.modules()}
    assert {MobileOneBlock, RepMixerBlock, AttentionBlock, RepCPE, ReparamLargeKernelConv, SEBlock} <= types
    if name in ("mci0", "mci1", "mci2"):
        assert SqueezeExcite in types
    assert _params_m(model) < 0.1 * PARAMS_M[name][0]


def _check_parity(name: str, reduced: bool, size: int, n_inputs: int) -> None:
    torch.manual_seed(0)
    model = randomize_bn_and_layer_scales(build_mci(name, EMBED[name], reduced=reduced).eval(), seed=1)
    fused = reparameterize_model(model)
    assert train_time_leftovers(fused) == []
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules()) == 0
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(n_inputs):
            x = torch.rand(2, 3, size, size, generator=g)
            a, b = model(x), fused(x)
            assert a.shape == (2, EMBED[name])
            cos, rel = _parity(a, b)
            assert cos >= 0.99999 and rel <= 1e-4, f"{name}: cosine {cos:.8f}, max|diff|/max|out| {rel:.2e}"


@pytest.mark.parametrize("name", mci_names())
def test_reduced_parity(name: str) -> None:
    _check_parity(name, reduced=True, size=128, n_inputs=1)


@pytest.mark.parametrize(
    "name,n_inputs",
    [("mci0", 2), *(pytest.param(n, 1, marks=pytest.mark.slow) for n in ("mci2", "mci4"))],
)  # full size S0 by default: the zero-BN fusion at real widths; the reduced cases cover every family
def test_full_size_parity(name: str, n_inputs: int) -> None:
    _check_parity(name, reduced=False, size=256, n_inputs=n_inputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mci1", "mci3"])
def test_full_size_parity_slow(name: str, request: pytest.FixtureRequest) -> None:
    # pyproject does not deselect `slow` by default; keep the default run short regardless.
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full-size MCi1/MCi3 parity: run with -m slow")
    _check_parity(name, reduced=False, size=256, n_inputs=2)


@pytest.mark.parametrize("name", mci_names())
@torch.no_grad()
def test_reduced_fusion_is_exact_in_float64(name: str) -> None:
    """In fp64 the only difference left is rounding: proves the algebra, independent of fp32 noise."""
    torch.manual_seed(0)
    model = build_mci(name, EMBED[name], reduced=True).eval()
    model = randomize_bn_and_layer_scales(model, seed=1, layer_scale_max=1.0).double()
    fused = reparameterize_model(model)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)  # fp64 convs are slow on CPU: keep it small
    a, b = model(x), fused(x)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-10


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="mci0, mci1, mci2, mci3, mci4"):
        build_mci("mci9", 512)


@torch.no_grad()
def test_reparameterized_mci_exports_with_dynamic_free_graph() -> None:
    """torch.export succeeds (no data-dependent control flow) and the exported program matches eager."""
    torch.manual_seed(0)
    fused = reparameterize_model(build_mci("mci0", 512, reduced=True).eval())
    x = torch.rand(1, 3, 128, 128)
    ep = torch.export.export(fused, (x,))
    x2 = torch.rand(1, 3, 128, 128)
    cos, rel = _parity(fused(x2), ep.module()(x2))
    assert cos >= 0.99999 and rel <= 1e-5


def _reference_inference_state_dict(train: nn.Module, fused: nn.Module) -> dict[str, torch.Tensor]:
    """Emulate Apple's reparameterized state_dict: our fused keys, except that ConvFFN BN, the attention BN
    and the layer scales are left unfolded (their tensors are the train-time ones, untouched by Apple)."""
    from mobileclip_export.models.blocks.convffn import ConvFFN

    sd = dict(fused.state_dict())
    tsd = train.state_dict()

    def copy_from_train(prefix: str) -> None:
        sd.update({k: v for k, v in tsd.items() if k.startswith(prefix)})

    for name, m in train.named_modules():
        p = name + "."
        if isinstance(m, ConvFFN):
            del sd[p + "conv.conv.bias"]
            copy_from_train(p + "conv.")
            copy_from_train(p + "fc2.")
        elif isinstance(m, RepMixerBlock):
            sd[p + "layer_scale"] = tsd[p + "layer_scale"]
        elif isinstance(m, AttentionBlock):
            sd[p + "layer_scale_1"], sd[p + "layer_scale_2"] = (
                tsd[p + "layer_scale_1"],
                tsd[p + "layer_scale_2"],
            )
            copy_from_train(p + "norm.")
            copy_from_train(p + "token_mixer.")
            if isinstance(m.norm, nn.BatchNorm2d):
                del sd[p + "token_mixer.qkv.bias"]
    return sd


@pytest.mark.parametrize("name", ["mci0", "mci3"])
@torch.no_grad()
def test_reference_inference_checkpoint_loads_into_our_fused_model(name: str) -> None:
    from mobileclip_export.reparam.rules_state_dict import fold_reference_inference_state_dict

    torch.manual_seed(0)
    train = randomize_bn_and_layer_scales(build_mci(name, EMBED[name], reduced=True).eval(), seed=1)
    ref_sd = _reference_inference_state_dict(train, reparameterize_model(train))
    assert any(k.endswith("convffn.conv.bn.running_var") for k in ref_sd)
    assert any(k.endswith("layer_scale_2") for k in ref_sd)
    torch.manual_seed(1)  # a differently initialised model: everything must come from the state_dict
    target = reparameterize_model(build_mci(name, EMBED[name], reduced=True).eval())
    target.load_state_dict(fold_reference_inference_state_dict(ref_sd), strict=True)
    x = torch.rand(2, 3, 128, 128)
    cos, rel = _parity(train(x), target(x))
    assert cos >= 0.99999 and rel <= 1e-4, (cos, rel)

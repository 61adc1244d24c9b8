"""Per-rule reparameterization tests: rewrite count, structure, numerics (random BN stats + layer scales)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileclip_export.errors import RegistryError, VerificationError
from mobileclip_export.models import blocks
from mobileclip_export.models.blocks.attention import MHSA, AttentionBlock, FusedAttentionBlock, LayerNorm2d
from mobileclip_export.models.blocks.convffn import ConvFFN, FusedConvFFN
from mobileclip_export.models.blocks.heads import GlobalPool2D, LinearPoolHead
from mobileclip_export.models.blocks.large_kernel import (
    FusedLargeKernelConv,
    PatchEmbed,
    ReparamLargeKernelConv,
)
from mobileclip_export.models.blocks.mobileone import FusedMobileOneBlock, MobileOneBlock
from mobileclip_export.models.blocks.repcpe import FusedRepCPE, RepCPE
from mobileclip_export.models.blocks.repmixer import (
    FusedRepMixer,
    FusedRepMixerBlock,
    RepMixer,
    RepMixerBlock,
)
from mobileclip_export.models.blocks.squeeze_excite import SEBlock, SqueezeExcite
from mobileclip_export.models.vit import ConvAct, ConvNormAct
from mobileclip_export.reparam import fuse, register_rule, registered_rules, reparameterize_model
from mobileclip_export.reparam import registry as reparam_registry
from mobileclip_export.reparam.verify import (
    assert_inference_form,
    randomize_bn_and_layer_scales,
    train_time_leftovers,
)

COS_MIN = 0.99999
REL_MAX = 1e-4

# train-time type -> its inference-form type
FUSED_TYPE: dict[type[nn.Module], type[nn.Module]] = {
    MobileOneBlock: FusedMobileOneBlock,
    RepMixer: FusedRepMixer,
    RepMixerBlock: FusedRepMixerBlock,
    ConvFFN: FusedConvFFN,
    ReparamLargeKernelConv: FusedLargeKernelConv,
    RepCPE: FusedRepCPE,
    AttentionBlock: FusedAttentionBlock,
    ConvNormAct: ConvAct,
}

# (id, factory, input shape)
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("mobileone-stem-k3s2", lambda: MobileOneBlock(3, 16, 3, stride=2), (2, 3, 32, 32)),
    ("mobileone-dw-k3s2", lambda: MobileOneBlock(16, 16, 3, stride=2, groups=16), (2, 16, 32, 32)),
    ("mobileone-k1-skip", lambda: MobileOneBlock(16, 16, 1), (2, 16, 16, 16)),
    ("mobileone-3branch-skip-scale", lambda: MobileOneBlock(16, 16, 3, num_conv_branches=3), (2, 16, 16, 16)),
    ("mobileone-convexp-se", lambda: MobileOneBlock(16, 32, 3, groups=16, use_se=True), (2, 16, 8, 8)),
    (
        "mobileone-text-1x11",
        lambda: MobileOneBlock(16, 16, (1, 11), groups=16, use_act=False),
        (2, 16, 1, 77),
    ),
    ("repmixer-k3", lambda: RepMixer(16, 3), (2, 16, 16, 16)),
    ("repmixer-text-1x11", lambda: RepMixer(16, (1, 11)), (2, 16, 1, 77)),
    ("convffn", lambda: ConvFFN(16, 48), (2, 16, 16, 16)),
    ("repmixerblock-image", lambda: RepMixerBlock(16, 3, 3.0), (2, 16, 16, 16)),
    ("repmixerblock-text", lambda: RepMixerBlock(32, (1, 11), 4.0, ffn_kernel_size=(1, 11)), (2, 32, 1, 77)),
    ("largekernel", lambda: ReparamLargeKernelConv(16, 32, 7, 2, groups=16), (2, 16, 16, 16)),
    ("largekernel-se", lambda: ReparamLargeKernelConv(16, 32, 7, 2, groups=16, use_se=True), (2, 16, 16, 16)),
    ("patchembed", lambda: PatchEmbed(16, 32, use_se=True), (2, 16, 16, 16)),
    ("repcpe", lambda: RepCPE(32), (2, 32, 8, 8)),
    ("attention-bn", lambda: AttentionBlock(64, 3.0, norm="batchnorm"), (2, 64, 4, 4)),
    ("attention-ln", lambda: AttentionBlock(64, 4.0, norm="layernorm"), (2, 64, 4, 4)),
    ("vit-stem-conv-bn-act", lambda: ConvNormAct(3, 16, 3, 2, padding=1), (2, 3, 16, 16)),
    ("vit-stem-conv-act", lambda: ConvNormAct(16, 16, 1, 1, padding=0, use_norm=False), (2, 16, 8, 8)),
]


def _count(model: nn.Module, t: type[nn.Module]) -> int:
    return sum(type(m) is t for m in model.modules())


def assert_parity(a: torch.Tensor, b: torch.Tensor) -> None:
    cos = F.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert cos >= COS_MIN and rel <= REL_MAX, (
        f"cosine {cos:.8f} (min {COS_MIN}), max|diff|/max|out| {rel:.2e}"
    )


def _randomized(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = factory().eval()
    return randomize_bn_and_layer_scales(m, seed + 1)


@pytest.mark.parametrize("factory,shape", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
@torch.no_grad()
def test_rule_rewrite_structure_and_numerics(
    factory: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    model = _randomized(factory)
    before = {t: _count(model, t) for t in FUSED_TYPE}
    fused = reparameterize_model(model)
    # rewrite count: every train-time block replaced by exactly one inference-form block
    for t, ft in FUSED_TYPE.items():
        assert _count(fused, t) == 0, f"{t.__name__} left"
    expected_fused = {ft: before[t] for t, ft in FUSED_TYPE.items()}
    # RepMixer's inner MobileOneBlocks are absorbed into the mixer conv
    expected_fused[FusedMobileOneBlock] -= 2 * before[RepMixer]
    for ft, n in expected_fused.items():
        assert _count(fused, ft) == n, f"{ft.__name__}: {_count(fused, ft)} != {n}"
    assert train_time_leftovers(fused) == []
    assert_inference_form(fused)
    for seed in range(2):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        assert_parity(model(x), fused(x))


DIRECT = [c for c in CASES if c[0] != "patchembed"]  # PatchEmbed has no rule of its own


@pytest.mark.parametrize("factory,shape", [(c[1], c[2]) for c in DIRECT], ids=[c[0] for c in DIRECT])
@torch.no_grad()
def test_rule_called_directly_matches_pass(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    """Each rule also fuses unfused children itself (the pass hands it fused ones)."""
    model = _randomized(factory)
    rule = registered_rules()[type(model)]
    direct = rule(model)
    x = torch.randn(shape)
    assert_parity(model(x), direct(x))


@torch.no_grad()
def test_reparameterize_never_mutates_input_and_is_idempotent() -> None:
    model = _randomized(
        lambda: nn.Sequential(
            RepMixerBlock(16), PatchEmbed(16, 32, use_se=True), RepCPE(32), AttentionBlock(32)
        )
    )
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]
    once = reparameterize_model(model)
    assert [type(m) for m in model.modules()] == types_before
    sd_after = model.state_dict()
    assert sd_after.keys() == sd_before.keys()
    assert all(torch.equal(sd_before[k], sd_after[k]) for k in sd_before)
    twice = reparameterize_model(once)
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]
    s1, s2 = once.state_dict(), twice.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert twice is not once


@torch.no_grad()
def test_randomized_stats_make_fusion_errors_visible() -> None:
    """Negative control: a model fused from the default (identity-like) BN stats must fail parity against the
    randomized train-time model; otherwise these tests could not catch a wrong BN/layer-scale fold."""
    torch.manual_seed(0)
    model = RepMixerBlock(16).eval()
    stale = reparameterize_model(model)
    randomize_bn_and_layer_scales(model, 3)
    x = torch.randn(2, 16, 8, 8)
    with pytest.raises(AssertionError):
        assert_parity(model(x), stale(x))
    ls = [p.abs() for n, p in model.named_parameters() if "layer_scale" in n]
    assert all(0.1 <= float(t.min()) and float(t.max()) <= 0.5 for t in ls)


def test_leftovers_name_train_time_modules() -> None:
    model = AttentionBlock(32).eval()
    left = train_time_leftovers(model)
    assert any(s.startswith("norm (BatchNorm2d)") for s in left)
    assert any("convffn.conv.bn" in s for s in left)
    assert any(s.startswith("<root> (AttentionBlock") for s in left)
    assert any("layer_scale_1" in s for s in left)
    with pytest.raises(VerificationError, match="train-time leftovers"):
        assert_inference_form(model)


def test_layernorm_stays_and_batchnorm_goes() -> None:
    ln = reparameterize_model(AttentionBlock(32, norm="layernorm").eval())
    bn = reparameterize_model(AttentionBlock(32, norm="batchnorm").eval())
    assert isinstance(ln.norm, LayerNorm2d) and isinstance(bn.norm, nn.Identity)
    assert bn.token_mixer.qkv.bias is not None and ln.token_mixer.qkv.bias is None


def test_duplicate_rule_registration_raises() -> None:
    with pytest.raises(RegistryError, match="MobileOneBlock is already registered .*fuse_mobileone"):
        register_rule(MobileOneBlock)(lambda m: m)


# ---- contracts: every rule has a numeric case, every block is classified, every rule module is listed ----
# Blocks in models/blocks/ that need no rule of their own (no BatchNorm, no branches; or a container whose
# children have rules). A new block class must be added to a rule (and CASES), FUSED_TYPE, or here.
NO_RULE_NEEDED = {LayerNorm2d, MHSA, GlobalPool2D, LinearPoolHead, PatchEmbed, SEBlock, SqueezeExcite}


def rules_without_case(rule_types: Iterable[type[nn.Module]]) -> list[str]:
    """Rule types that no numeric case in CASES instantiates (directly or as a child)."""
    covered = {type(m) for _, factory, _ in CASES for m in factory().modules()}
    return sorted(t.__name__ for t in rule_types if t not in covered)


def unclassified_blocks(classes: Iterable[type[nn.Module]]) -> list[str]:
    known = set(registered_rules()) | set(FUSED_TYPE.values()) | {ConvAct} | NO_RULE_NEEDED
    return sorted(c.__name__ for c in classes if c not in known)


def _block_classes() -> list[type[nn.Module]]:
    out = []
    for info in pkgutil.iter_modules(blocks.__path__):
        module = importlib.import_module(f"{blocks.__name__}.{info.name}")
        out += [
            c
            for c in vars(module).values()
            if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__
        ]
    return out


def test_every_rule_has_a_numeric_case() -> None:
    assert rules_without_case(registered_rules()) == []


def test_rule_case_contract_catches_a_rule_without_case(monkeypatch) -> None:
    class ToyBlock(nn.Module):
        pass

    monkeypatch.setitem(reparam_registry._RULES, ToyBlock, lambda m: m)
    assert rules_without_case(registered_rules()) == ["ToyBlock"]


def test_every_block_has_a_rule_or_needs_none() -> None:
    classes = _block_classes()
    assert MobileOneBlock in classes and SEBlock in classes
    assert unclassified_blocks(classes) == []

    class NewBlock(nn.Module):  # a new train-time block without a rule is caught
        pass

    assert unclassified_blocks([*classes, NewBlock]) == ["NewBlock"]


def test_every_module_registering_rules_is_listed() -> None:
    folder = Path(reparam_registry.__file__).parent
    registering = sorted(
        p.stem for p in folder.glob("*.py") if "@register_rule(" in p.read_text(encoding="utf-8")
    )
    assert registering == sorted(reparam_registry.RULE_MODULES)


# ---- fuse.py unit tests -------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("k", [1, 3, (1, 11)])
def test_identity_kernel_is_identity(groups: int, k: int | tuple[int, int]) -> None:
    kh, kw = fuse._pair(k)
    x = torch.randn(2, 16, 5, 13)
    y = F.conv2d(x, fuse.identity_kernel(16, groups, k), padding=(kh // 2, kw // 2), groups=groups)
    assert torch.equal(x, y)


@torch.no_grad()
def test_fuse_conv_bn_matches_sequential() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=True)
    bn = randomize_bn_and_layer_scales(nn.BatchNorm2d(12), 5).eval()
    w, b = fuse.fuse_conv_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 8, 9, 9)
    assert_parity(bn(conv(x)), F.conv2d(x, w, b, padding=1))


@torch.no_grad()
def test_fold_input_affine_and_scale_output() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 6)
    a, c, s = torch.rand(8) + 0.5, torch.randn(8), torch.randn(6)
    w, b = fuse.fold_input_affine(lin.weight, lin.bias, a, c)
    x = torch.randn(4, 8)
    assert_parity(lin(a * x + c), F.linear(x, w, b))
    w2, b2 = fuse.scale_output(lin.weight, lin.bias, s)
    assert_parity(s * lin(x), F.linear(x, w2, b2))
    with pytest.raises(ValueError, match="1x1"):
        fuse.fold_input_affine(torch.randn(6, 8, 3, 3), None, a, c)


def test_pad_kernel_to_centres_and_rejects_bad_sizes() -> None:
    k = torch.randn(4, 1, 3, 3)
    p = fuse.pad_kernel_to(k, 7)
    assert p.shape == (4, 1, 7, 7) and torch.equal(p[..., 2:5, 2:5], k) and p.abs().sum() == k.abs().sum()
    with pytest.raises(ValueError):
        fuse.pad_kernel_to(k, 4)
    with pytest.raises(ValueError):
        fuse.identity_kernel(4, 1, 2)


def test_a_new_block_is_caught_until_it_has_a_rule_and_a_case(monkeypatch) -> None:
    """The CONTRIBUTING recipe for a block + rule, end to end, on a toy conv+BN block."""

    class ToyConvBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    model = _randomized(lambda: nn.Sequential(ToyConvBN(), nn.ReLU()))
    with pytest.raises(VerificationError, match="BatchNorm2d"):  # no rule: the inference-form check says so
        assert_inference_form(reparameterize_model(model))
    assert unclassified_blocks([ToyConvBN]) == ["ToyConvBN"]

    monkeypatch.setattr(reparam_registry, "_RULES", dict(reparam_registry._RULES))

    @register_rule(ToyConvBN)
    def fuse_toy(m: ToyConvBN) -> nn.Conv2d:
        return fuse.conv_from(m.conv, *fuse.fuse_conv_bn(m.conv.weight, m.conv.bias, m.bn))

    fused = reparameterize_model(model)
    assert_inference_form(fused)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert_parity(model(x), fused(x))
    assert rules_without_case(registered_rules()) == ["ToyConvBN"]  # until CASES gets its numeric case

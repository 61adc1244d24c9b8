"""Checkpoint loading: round trips through every format, inference-form lifting, bad inputs, variant hints.

Models carry randomized BatchNorm statistics so an identity-like BN cannot hide a wrong mapping.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mobileclip_export.errors import CheckpointError
from mobileclip_export.export.registry import all_targets
from mobileclip_export.models import checkpoint as ck
from mobileclip_export.models.checkpoint import fingerprints, keymaps
from mobileclip_export.models.factory import create_model
from mobileclip_export.reparam import create_model as create_any_form
from mobileclip_export.reparam import load_model_checkpoint

DATA = Path(__file__).parent / "data"
FORMATS = ("apple", "open_clip", "timm")


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
        for name, p in model.named_parameters():
            if "layer_scale" in name:  # 1e-5 at init would make whole branches invisible
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def _model(name: str, seed: int, reduced: bool = True) -> nn.Module:
    logging.disable(logging.WARNING)
    try:
        return _randomize(create_model(name, seed=seed, reduced=reduced), seed)
    finally:
        logging.disable(logging.NOTSET)


def _inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, model.image_size, model.image_size, generator=g)
    ids = torch.zeros(1, 77, dtype=torch.int64)
    ids[:, 0] = 49406
    ids[:, 1:9] = torch.randint(1, 49000, (1, 8), generator=g)
    ids[:, 9] = 49407
    return x, ids


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(x), model.encode_text(ids)


def _save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


# ----------------------------------------------------------------------------------------- round trips

# One reduced model per block family: MCi0 (also the SE downsamples of MCi1/2) + MCt text; MCi3 (5 stages,
# channel LayerNorm, linear head, as MCi4) + 768 text; cvnets ViT-B/16 + causal text; timm-named ViT-L/14.
FAMILIES = ("mobileclip_s0", "mobileclip_s3", "mobileclip_b", "mobileclip_l14")


@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[nn.Module, tuple, tuple]]:
    out = {}
    for name in FAMILIES:
        m = _model(name, seed=1)
        x, ids = _inputs(m)
        out[name] = (m, (x, ids), _outputs(m, x, ids))
    return out


# (format, file suffix): every format as .pt and .safetensors; open_clip also under DDP's "module." prefix
# (the MobileCLIP2 training .pt files).
COMBOS = [(f, s) for f in ("apple", "open_clip", "open_clip+module", "timm") for s in (".pt", ".safetensors")]


@pytest.mark.parametrize("name", FAMILIES)
def test_roundtrip_every_format(name: str, sources, tmp_path: Path) -> None:
    src, (x, ids), (ref_img, ref_txt) = sources[name]
    dst = _model(name, seed=2)
    random_sd = copy.deepcopy(dst.state_dict())
    _, random_txt = _outputs(dst, x, ids)
    assert float((random_txt - ref_txt).abs().max()) > 1e-3  # a load must visibly change the model
    src_sd = src.state_dict()
    for fmt, suffix in COMBOS:
        base_fmt = fmt.split("+")[0]
        sd = ck.export_state_dict(src, base_fmt)
        if fmt.endswith("+module"):
            sd = {"module." + k: v for k, v in sd.items()}
        path = _save(sd, tmp_path / f"{fmt}{suffix}")
        dst.load_state_dict(random_sd)  # back to random weights before each load
        report = ck.load_checkpoint(dst, path)
        where = f"{name} {fmt}{suffix}"
        assert report.format == base_fmt and report.reparameterized is False, where
        assert report.n_tensors == len(sd), where
        assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), where
        # zero missing / unexpected keys is enforced by the strict load; every tensor arrived intact
        got = dst.state_dict()
        image_only = base_fmt == "timm"
        for k, v in src_sd.items():
            want = random_sd[k] if image_only and not k.startswith("image_encoder.") else v
            assert torch.equal(got[k], want), f"{where}: {k}"
        if image_only:
            assert "image only" in report.loaded and not any(k.startswith(("text", "logit")) for k in sd)
        if suffix == ".pt":
            continue  # same tensors as the .safetensors case (checked above): skip the forward passes
        img, txt = _outputs(dst, x, ids)
        assert torch.equal(img, ref_img), f"{where}: image max|diff| {float((img - ref_img).abs().max())}"
        want_txt = random_txt if image_only else ref_txt
        assert torch.equal(txt, want_txt), f"{where}: text max|diff| {float((txt - want_txt).abs().max())}"


def test_full_size_s0_roundtrip(tmp_path: Path) -> None:
    src = _model("mobileclip_s0", seed=1, reduced=False)
    assert len(src.state_dict()) == 893  # reference key count of mobileclip_s0.pt
    x, ids = _inputs(src)
    ref_img, ref_txt = _outputs(src, x, ids)
    files = {
        fmt: _save(ck.export_state_dict(src, fmt), tmp_path / f"s0-{fmt}{suffix}")
        for fmt, suffix in (("apple", ".pt"), ("open_clip", ".safetensors"), ("timm", ".safetensors"))
    }
    del src
    dst = _model("mobileclip_s0", seed=2, reduced=False)
    random_sd = copy.deepcopy(dst.state_dict())
    for fmt, path in files.items():
        dst.load_state_dict(random_sd)
        report = ck.load_checkpoint(dst, path)
        img, txt = _outputs(dst, x, ids)
        assert torch.equal(img, ref_img), fmt
        assert report.n_tensors == {"apple": 893, "open_clip": 894, "timm": 784}[fmt]  # + zero head bias
        if fmt != "timm":
            assert torch.equal(txt, ref_txt), fmt


def test_create_model_loads_checkpoint(tmp_path: Path) -> None:
    src = _model("mobileclip_s3", seed=1)
    path = _save(ck.export_state_dict(src, "open_clip"), tmp_path / "s3.safetensors")
    logging.disable(logging.WARNING)
    m = create_model("mobileclip_s3", checkpoint=path, reduced=True)
    logging.disable(logging.NOTSET)
    x, ids = _inputs(src)
    for a, b in zip(_outputs(m, x, ids), _outputs(src, x, ids), strict=True):
        assert torch.equal(a, b)
    assert m.random_init is False and m.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ key names


def test_fastvit_names_match_timm_reference() -> None:
    """Spot checks against timm's fastvit names (stage split from the flat Apple network list)."""
    keys = _model("mobileclip_s0", seed=0).state_dict().keys()
    m = {c: e.foreign for c, e in keymaps.build_keymap(keys, "timm").entries.items()}
    p = keymaps.IMAGE_PREFIX
    assert m[p + "patch_embed.0.rbr_conv.0.conv.weight"] == "stem.0.conv_kxk.0.conv.weight"
    assert m[p + "patch_embed.0.rbr_scale.bn.running_var"] == "stem.0.conv_scale.bn.running_var"
    assert m[p + "patch_embed.2.rbr_skip.weight"] == "stem.2.identity.weight"
    assert m[p + "network.0.0.token_mixer.layer_scale"] == "stages.0.blocks.0.token_mixer.layer_scale.gamma"
    assert m[p + "network.0.0.convffn.conv.bn.bias"] == "stages.0.blocks.0.mlp.conv.bn.bias"
    assert (
        m[p + "network.1.proj.0.lkb_origin.conv.weight"]
        == "stages.1.downsample.proj.0.large_conv.conv.weight"
    )
    assert m[p + "network.2.0.layer_scale"] == "stages.1.blocks.0.layer_scale.gamma"
    assert m[p + "network.5.proj.0.se.fc1.weight"] == "stages.3.downsample.proj.0.se.fc1.weight"
    assert m[p + "network.6.pe.weight"] == "stages.3.pos_emb.pos_enc.weight"
    assert m[p + "network.7.0.layer_scale_2"] == "stages.3.blocks.0.layer_scale_2.gamma"
    assert m[p + "network.7.0.token_mixer.qkv.weight"] == "stages.3.blocks.0.token_mixer.qkv.weight"
    assert m[p + "conv_exp.se.reduce.weight"] == "final_conv.se.fc1.weight"
    assert m[p + "conv_exp.rbr_conv.0.conv.weight"] == "final_conv.conv_kxk.0.conv.weight"
    assert m[p + "head.proj"] == "head.fc.weight"
    # inference-form names (Apple reparameterize_model -> timm reparameterize_model)
    inf = keymaps.apple_inference_shapes({k: torch.Size([1]) for k in keys})
    mi = {c: e.foreign for c, e in keymaps.build_keymap(inf, "timm").entries.items()}
    assert mi[p + "network.1.proj.0.lkb_reparam.weight"] == "stages.1.downsample.proj.0.reparam_conv.weight"
    assert mi[p + "network.6.reparam_conv.bias"] == "stages.3.pos_emb.reparam_conv.bias"
    assert (
        mi[p + "network.0.0.token_mixer.reparam_conv.weight"]
        == "stages.0.blocks.0.token_mixer.reparam_conv.weight"
    )


def test_five_stage_mci3_stage_split() -> None:
    keys = _model("mobileclip_s3", seed=0).state_dict().keys()
    m = {c: e.foreign for c, e in keymaps.build_keymap(keys, "open_clip").entries.items()}
    p, q = keymaps.IMAGE_PREFIX, "visual.trunk."
    assert (
        m[p + "network.8.proj.1.rbr_conv.0.conv.weight"]
        == q + "stages.4.downsample.proj.1.conv_kxk.0.conv.weight"
    )
    assert m[p + "network.9.pe.bias"] == q + "stages.4.pos_emb.pos_enc.bias"
    assert m[p + "network.10.0.norm.weight"] == q + "stages.4.blocks.0.norm.weight"
    assert m[p + "head.fc.bias"] == q + "head.fc.bias"


def test_vit_and_text_names() -> None:
    keys = _model("mobileclip_b", seed=0).state_dict().keys()
    m = {c: e.foreign for c, e in keymaps.build_keymap(keys, "open_clip").entries.items()}
    p, q = keymaps.IMAGE_PREFIX, "visual.trunk."
    assert m[p + "patch_emb.0.block.norm.running_mean"] == q + "patch_embed.backbone.0.bn.running_mean"
    assert m[p + "patch_emb.2.block.conv.bias"] == q + "patch_embed.backbone.2.conv.bias"
    assert m[p + "transformer.0.pre_norm_mha.1.qkv_proj.weight"] == q + "blocks.0.attn.qkv.weight"
    assert m[p + "transformer.0.pre_norm_mha.1.out_proj.bias"] == q + "blocks.0.attn.proj.bias"
    assert m[p + "transformer.0.pre_norm_ffn.4.weight"] == q + "blocks.0.mlp.fc2.weight"
    assert m[p + "post_transformer_norm.weight"] == q + "norm.weight"
    assert m[p + "classifier.proj"] == q + "head.weight"
    t = "text_encoder."
    assert (
        m[t + "transformer.0.pre_norm_mha.1.qkv_proj.bias"]
        == "text.transformer.resblocks.0.attn.in_proj_bias"
    )
    assert (
        m[t + "transformer.0.pre_norm_mha.1.out_proj.weight"]
        == "text.transformer.resblocks.0.attn.out_proj.weight"
    )
    assert m[t + "transformer.0.pre_norm_ffn.1.weight"] == "text.transformer.resblocks.0.mlp.c_fc.weight"
    assert m[t + "positional_embedding.pos_embed.pos_embed"] == "text.positional_embedding"
    assert m[t + "projection_layer"] == "text.text_projection"
    sd = ck.export_state_dict(_model("mobileclip_b", seed=0), "open_clip")
    assert sd["text.positional_embedding"].shape == (77, 128)  # squeezed from [1, 1, 77, D]
    assert sd["visual.trunk.pos_embed"].dim() == 3 and not sd["visual.trunk.head.bias"].any()


def test_timm_golden_keys_for_full_size_mci0() -> None:
    """Key names and shapes of timm ``fastvit_mci0(num_classes=512)`` (train-time and after timm's
    reparameterize_model), recorded from timm 1.0.31: our export must equal them exactly."""
    golden = json.loads((DATA / "timm-fastvit_mci0-keys.json").read_text())
    with torch.device("meta"):
        logging.disable(logging.WARNING)
        model = create_model("mobileclip_s0")
        logging.disable(logging.NOTSET)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    train = {e.foreign: list(shapes[c]) for c, e in keymaps.build_keymap(shapes, "timm").entries.items()}
    train["head.fc.weight"] = train["head.fc.weight"][::-1]
    train["head.fc.bias"] = [train["head.fc.weight"][0]]
    assert train == golden["train"]
    inf_shapes = keymaps.apple_inference_shapes(shapes)
    inf = {
        e.foreign: list(inf_shapes[c]) for c, e in keymaps.build_keymap(inf_shapes, "timm").entries.items()
    }
    inf["head.fc.weight"] = inf["head.fc.weight"][::-1]
    inf["head.fc.bias"] = [inf["head.fc.weight"][0]]
    assert inf == golden["reparameterized"]


def test_keymap_rejects_collisions() -> None:
    with pytest.raises(keymaps.KeyMapError, match="both map to"):
        keymaps.KeyMap("timm", {"a": keymaps.Entry("x"), "b": keymaps.Entry("x")})


# ------------------------------------------------------------------------------- inference-form inputs


def _apple_inference_form(model: nn.Module) -> nn.Module:
    """What Apple's/timm's reparameterize_model leaves: only MobileOne/RepMixer/large-kernel/RepCPE fused."""
    from mobileclip_export.reparam import rules

    kinds = {
        rules.MobileOneBlock: rules.fuse_mobileone,
        rules.RepMixer: rules.fuse_repmixer,
        rules.ReparamLargeKernelConv: rules.fuse_large_kernel,
        rules.RepCPE: rules.fuse_repcpe,
    }

    def walk(m: nn.Module) -> nn.Module:
        if type(m) in kinds:
            return kinds[type(m)](m)
        for n, c in list(m.named_children()):
            setattr(m, n, walk(c))
        return m

    return walk(copy.deepcopy(model)).eval()


@pytest.mark.parametrize("fmt", ["apple", "timm", "open_clip"])
@pytest.mark.parametrize("name", ["mobileclip_s0", "mobileclip_s3"])
def test_apple_inference_form_is_lifted_exactly(name: str, fmt: str, sources, tmp_path: Path) -> None:
    src, (x, ids), (ref_img, ref_txt) = sources[name]
    inf = _apple_inference_form(src)
    sd = ck.export_state_dict(inf, fmt)
    assert ck.needs_inference_form(sd)
    n_fused = sum(k.endswith(("reparam_conv.weight", "lkb_reparam.weight")) for k in sd)
    path = _save(sd, tmp_path / f"{name}-inf.safetensors")
    dst = _model(name, seed=2)
    report = ck.load_checkpoint(dst, path)
    assert report.reparameterized is True and report.lifted_modules == n_fused > 0
    img, txt = _outputs(dst, x, ids)
    assert float((img - ref_img).abs().max()) <= 1e-4 * max(1.0, float(ref_img.abs().max()))
    if fmt != "timm":
        assert float((txt - ref_txt).abs().max()) <= 1e-4 * max(1.0, float(ref_txt.abs().max()))
    # our own reparameterization of the lifted model gives the same function again
    from mobileclip_export.reparam import reparameterize_model

    fused_img = reparameterize_model(dst).encode_image(x).detach()
    assert float((fused_img - ref_img).abs().max()) <= 1e-4 * max(1.0, float(ref_img.abs().max()))


def test_project_fused_form_goes_to_reparameterized_model(sources, tmp_path: Path) -> None:
    from mobileclip_export.reparam import reparameterize_model

    src, (x, ids), (ref_img, ref_txt) = sources["mobileclip_s0"]
    fused_src = reparameterize_model(src)
    path = _save(fused_src.state_dict(), tmp_path / "fused.pt")
    dst = _model("mobileclip_s0", seed=2)
    with pytest.raises(CheckpointError, match=r"reparameterize_model\(model\)"):
        ck.load_checkpoint(dst, path)
    model, report = load_model_checkpoint(dst, path)
    assert model is not dst and report.reparameterized
    img, txt = _outputs(model, x, ids)
    want_img, want_txt = _outputs(fused_src, x, ids)
    assert torch.equal(img, want_img) and torch.equal(txt, want_txt)


def test_fused_checkpoint_needs_the_reparam_create_model(sources, tmp_path: Path) -> None:
    """models.create_model (train-time form only: models never import reparam) refuses our fused form and
    names the way; reparam.create_model builds the fused model with the checkpoint's exact outputs."""
    from mobileclip_export.reparam import reparameterize_model

    src, (x, ids), _ = sources["mobileclip_s0"]
    fused_src = reparameterize_model(src)
    path = _save(fused_src.state_dict(), tmp_path / "fused.safetensors")
    with pytest.raises(CheckpointError, match=r"reparam\.load_model_checkpoint"):
        _quiet_create("mobileclip_s0", path, any_form=False)
    model = create_any_form("mobileclip_s0", path, seed=3, reduced=True)
    assert model.random_init is False and model.seed == 3
    assert model.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for a, b in zip(_outputs(model, x, ids), _outputs(fused_src, x, ids), strict=True):
        assert torch.equal(a, b)
    # a train-time checkpoint gives exactly what models.create_model gives
    train = _save(src.state_dict(), tmp_path / "train.safetensors")
    a = _quiet_create("mobileclip_s0", train)
    b = _quiet_create("mobileclip_s0", train, any_form=False)
    assert type(a.image_encoder.model) is type(b.image_encoder.model)
    assert all(torch.equal(u, v) for u, v in zip(_outputs(a, x, ids), _outputs(b, x, ids), strict=True))


# ---------------------------------------------------------------------------------------- bad inputs


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # would create the marker file if the pickle were ever executed
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_unsafe_pickle_is_refused_without_running(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"image_encoder.model.x": torch.zeros(1), "boom": _Evil(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused unsafe pickle.*not a plain tensor checkpoint") as ei:
        ck.load_state_dict_file(path)
    assert "nothing was executed" in str(ei.value)
    assert not marker.exists()
    # sanity: the payload really is live (unpickling it unsafely WOULD create the marker)
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def _zip_bytes(**files: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return buf.getvalue()


BAD_CASES = {
    "missing": (None, "checkpoint not found"),
    "empty": (b"", r"empty \(0 bytes\)"),
    "text": (b"hello, I am a README\n", "is not a PyTorch checkpoint: text starting"),
    "zip_of_other_stuff": (
        _zip_bytes(**{"readme.txt": "x", "img.png": "y"}),
        "zip archive but not a PyTorch",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_have_their_own_message(case: str, tmp_path: Path) -> None:
    data, pattern = BAD_CASES[case]
    path = tmp_path / "ckpt.pt"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(CheckpointError, match=pattern):
        ck.load_state_dict_file(path)


def test_directory_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        ck.load_state_dict_file(tmp_path)
    good = {"image_encoder.model.a": torch.randn(64, 64)}
    full = tmp_path / "full.pt"
    torch.save(good, full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_state_dict_file(cut)
    legacy = tmp_path / "legacy.pt"
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    cut.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.load_state_dict_file(cut)
    st = _save(good, tmp_path / "full.safetensors")
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ck.load_state_dict_file(cut_st)


def test_non_tensor_values_and_containers(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {"text_encoder.a": torch.ones(2)}, "epoch": 3}, path)
    assert list(ck.load_state_dict_file(path)) == ["text_encoder.a"]  # unwrapped
    torch.save({"model": {"state_dict": {"text_encoder.a": torch.ones(2)}}}, path)
    assert list(ck.load_state_dict_file(path)) == ["text_encoder.a"]
    torch.save({"text_encoder.a": torch.ones(2), "lr": 0.1, "name": "x"}, path)
    with pytest.raises(CheckpointError, match=r"2 of 3 values are not tensors \('lr': float"):
        ck.load_state_dict_file(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        ck.load_state_dict_file(path)


def test_detect_format_and_inference_form() -> None:
    t = torch.zeros(1)
    assert ck.detect_format({"image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight": t}) == "apple"
    assert ck.detect_format({"module.visual.trunk.stem.0.conv_kxk.0.conv.weight": t}) == "open_clip"
    assert ck.detect_format({"token_embedding.weight": t, "visual.proj": t}) == "open_clip"
    assert ck.detect_format({"stages.0.blocks.0.mlp.fc1.weight": t}) == "timm"
    assert (
        ck.detect_format({"patch_embed.backbone.0.conv.weight": t, "blocks.0.attn.qkv.weight": t}) == "timm"
    )
    with pytest.raises(CheckpointError, match="not a MobileCLIP checkpoint.*apple: image_encoder"):
        ck.detect_format({"encoder.layer.0.weight": t})
    assert ck.needs_inference_form({"stem.0.reparam_conv.weight": t})
    assert not ck.needs_inference_form({"stem.0.reparam_conv.weight": t, "stem.1.conv_kxk.0.conv.weight": t})
    assert not ck.needs_inference_form({"image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight": t})


def test_nonzero_timm_head_bias_is_rejected(sources, tmp_path: Path) -> None:
    src = sources["mobileclip_s0"][0]
    sd = ck.export_state_dict(src, "timm")
    sd["head.fc.bias"] = torch.full_like(sd["head.fc.bias"], 0.25)
    path = _save(sd, tmp_path / "cls.safetensors")
    with pytest.raises(CheckpointError, match=r"head.fc.bias is non-zero \(max \|b\| = 0.25\)"):
        ck.load_checkpoint(_model("mobileclip_s0", seed=2), path)


def test_missing_and_unexpected_keys_are_named_and_counted(sources, tmp_path: Path) -> None:
    src = sources["mobileclip_s0"][0]
    sd = ck.export_state_dict(src, "apple")
    dropped = sorted(k for k in sd if ".convffn.fc1." in k)
    for k in dropped:
        del sd[k]
    sd["image_encoder.model.extra.weight"] = torch.zeros(3)
    path = _save(sd, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(_model("mobileclip_s0", seed=2), path)
    msg = str(ei.value)
    assert f"{len(dropped)} missing keys: {dropped[0]}" in msg and f"(+{len(dropped) - 5} more)" in msg
    assert "1 unexpected keys: image_encoder.model.extra.weight" in msg
    assert "different variant" not in msg  # same architecture, just broken


def test_other_variant_is_named() -> None:
    """A full-size MobileCLIP-S2 checkpoint offered to MobileCLIP-S0 (shapes only, on the meta device)."""
    logging.disable(logging.WARNING)
    with torch.device("meta"):
        s0, s2 = create_model("mobileclip_s0"), create_model("mobileclip_s2")
    logging.disable(logging.NOTSET)
    fake = ck.Checkpoint(ck.export_state_dict(s2, "open_clip"), "open_clip", False, "0" * 64, Path("s2.pt"))
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(s0, fake)
    msg = str(ei.value)
    assert "looks like a different variant: image mci2 (stem 80 ch, blocks 4-12-24-4, head 1280->512)" in msg
    assert "text base-512 (12 layers x 512) [= mobileclip2_s2, mobileclip_s2]" in msg
    assert (
        "the model is image mci0 (stem 64 ch, blocks 2-6-10-2, head 1024->512) + text mct (6 layers x 512)"
        in msg
    )
    assert "shape mismatches" in msg and "missing keys" in msg and "unexpected keys" in msg


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (
            "mobileclip_s4",
            "image mci4 (stem 128 ch, blocks 2-12-24-4-4, head 4096->768 with bias)"
            " + text base-768 (12 layers x 768)",
        ),
        ("mobileclip_b", "image vit_b16 (12 blocks, width 768) + text base-512 (12 layers x 512)"),
        ("mobileclip_l14", "image vit_l14 (24 blocks, width 1024) + text base-768 (12 layers x 768)"),
    ],
)
def test_fingerprints_of_full_size_variants(name: str, want: str) -> None:
    logging.disable(logging.WARNING)
    with torch.device("meta"):
        m = create_model(name)
    logging.disable(logging.NOTSET)
    for fmt in FORMATS:
        fp = ck.fingerprint(ck.export_state_dict(m, fmt), fmt)
        text = fingerprints._fp_text(fp)
        assert text == (want.split(" + ")[0] if fmt == "timm" else want), fmt


def test_mci_guess_falls_back_to_stem_width() -> None:
    assert fingerprints._mci_guess((4, 12, 24, 4), 80) == "mci2"  # depths decide
    # unknown depths: the stem width narrows it down
    assert fingerprints._mci_guess((1, 1, 1, 1), 64) == "mci0/mci1"
    assert fingerprints._mci_guess((1, 1, 1, 1), 16) == "mci?"


# ------------------------------------------------------------- MobileCLIP2 heads with a trained bias

# The MobileCLIP2 towers whose head is timm's classifier Linear (open_clip ``timm_proj: null``) where our v1
# counterparts (S0/S2: GlobalPool2D, B: cvnets classifier) have none. S3/S4/L-14 always had theirs.
BIASED = ("mobileclip2_s0", "mobileclip2_s2", "mobileclip2_b")
# foreign name of the head bias per format (timm towers: no prefix)
_FOREIGN_BIAS = {"mobileclip2_b": "head.bias"}


def _trained_head_bias(model: nn.Module, seed: int) -> torch.Tensor:
    """Give ``model``'s image head a random non-zero bias as large as its outputs; returns the bias."""
    _, bias_key = keymaps.image_head_keys(model.state_dict())
    x, ids = _inputs(model)
    with torch.no_grad():
        scale = float(model.encode_image(x).abs().mean())
        bias = model.state_dict()[bias_key]
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)) * scale)
    return bias


def _writer(name: str, reduced: bool = True) -> nn.Module:
    """The model that writes the checkpoint: randomized BN/layer scales and a trained head bias.
    Reduced writers are built once per module (tests only read them)."""
    return _reduced_writer(name) if reduced else _trained_writer(name, reduced=False)


def _trained_writer(name: str, reduced: bool) -> nn.Module:
    m = _model(name, seed=1, reduced=reduced)
    _trained_head_bias(m, seed=1)
    return m


@functools.cache
def _reduced_writer(name: str) -> nn.Module:
    return _trained_writer(name, reduced=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _quiet_create(name: str, path: Path, reduced: bool = True, any_form: bool = True) -> nn.Module:
    """The model a user's checkpoint gives: reparam.create_model, as the commands build it
    (``any_form=False``: models.create_model, train-time form only)."""
    create = create_any_form if any_form else create_model
    logging.disable(logging.WARNING)
    try:
        return create(name, checkpoint=path, reduced=reduced)
    finally:
        logging.disable(logging.NOTSET)


def _foreign_bias_key(name: str, fmt: str) -> str:
    key = _FOREIGN_BIAS.get(name, "head.fc.bias")
    return key if fmt == "timm" else ("module." if fmt.endswith("+module") else "") + "visual.trunk." + key


def _check_reproduces(name: str, src: nn.Module, path: Path, image_only: bool, reduced: bool = True) -> None:
    m = _quiet_create(name, path, reduced)
    x, ids = _inputs(src)
    (img, txt), (ref_img, ref_txt) = _outputs(m, x, ids), _outputs(src, x, ids)
    assert _rel(img, ref_img) <= 1e-6, f"{name} image: {_rel(img, ref_img):.2e}"
    if not image_only:
        assert _rel(txt, ref_txt) <= 1e-6, f"{name} text: {_rel(txt, ref_txt):.2e}"
    # the bias is visible: without it the image embedding is far off (so a dropped bias cannot pass)
    _, bias_key = keymaps.image_head_keys(src.state_dict())
    assert _rel(img - src.state_dict()[bias_key], ref_img) > 0.1


@pytest.mark.parametrize("fmt", ["open_clip", "open_clip+module", "timm"])
@pytest.mark.parametrize("name", BIASED)
def test_trained_head_bias_loads_exactly(name: str, fmt: str, tmp_path: Path) -> None:
    src = _writer(name)
    sd = ck.export_state_dict(src, fmt.split("+")[0])
    if fmt.endswith("+module"):
        sd = {"module." + k: v for k, v in sd.items()}
    assert float(sd[_foreign_bias_key(name, fmt)].abs().min()) > 0  # written as open_clip/timm name it
    path = _save(sd, tmp_path / f"{name}-{fmt}{'.pt' if '+' in fmt else '.safetensors'}")
    _check_reproduces(name, src, path, image_only=fmt == "timm")


@pytest.mark.slow
@pytest.mark.parametrize("name", BIASED)
def test_full_size_trained_head_bias(name: str, tmp_path: Path) -> None:
    """Full-size open_clip checkpoint (``module.`` prefix, as the MobileCLIP2 training .pt files)."""
    src = _writer(name, reduced=False)
    sd = {"module." + k: v for k, v in ck.export_state_dict(src, "open_clip").items()}
    path = _save(sd, tmp_path / f"{name}.pt")
    del sd
    _check_reproduces(name, src, path, image_only=False, reduced=False)


@pytest.mark.parametrize("fmt", ["apple", "open_clip"])
@pytest.mark.parametrize("name", BIASED)
def test_bias_free_head_is_zero_filled_and_reported(name: str, fmt: str, tmp_path: Path) -> None:
    """Apple v1 heads (``head.proj``/``classifier.proj``) or a bias-free Linear, into a head with a bias."""
    src = _model(name, seed=1)
    weight_key, bias_key = keymaps.image_head_keys(src.state_dict())
    sd = ck.export_state_dict(src, fmt)
    del sd[bias_key if fmt == "apple" else _foreign_bias_key(name, fmt)]
    path = _save(sd, tmp_path / f"{fmt}.safetensors")
    dst = _model(name, seed=2)
    report = ck.load_checkpoint(dst, path)
    assert report.zero_filled == [bias_key] and f"zero-filled {bias_key}" in str(report)
    assert any("has no bias (Apple v1 form)" in n for n in report.notes)
    assert not dst.state_dict()[bias_key].any()
    x, ids = _inputs(src)
    with torch.no_grad():
        src.state_dict()[bias_key].zero_()
    assert torch.equal(_outputs(dst, x, ids)[0], _outputs(src, x, ids)[0])


FOREIGN_HEADS = {
    # wrong bias length
    "bias-shape": (
        lambda sd: sd.__setitem__("visual.trunk.head.fc.bias", torch.ones(513)),
        ["1 shape mismatches: image_encoder.model.head.bias: checkpoint [513] vs model [512]"],
    ),
    # an MLP head (two layers) instead of one Linear
    "extra-layers": (
        lambda sd: sd.update(
            {
                "visual.trunk.head.fc1.weight": sd.pop("visual.trunk.head.fc.weight"),
                "visual.trunk.head.fc1.bias": sd.pop("visual.trunk.head.fc.bias"),
                "visual.trunk.head.fc2.weight": torch.ones(512, 512),
            }
        ),
        [
            "2 missing keys: image_encoder.model.head.bias, image_encoder.model.head.proj",
            "3 unexpected keys: visual.trunk.head.fc1.bias, visual.trunk.head.fc1.weight, "
            "visual.trunk.head.fc2.weight",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_HEADS))
def test_foreign_head_is_named_not_zero_filled(case: str, tmp_path: Path) -> None:
    edit, wants = FOREIGN_HEADS[case]
    sd = ck.export_state_dict(_writer("mobileclip2_s0"), "open_clip")
    edit(sd)
    path = _save(sd, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(_model("mobileclip2_s0", seed=2), path)
    for want in wants:
        assert want in str(ei.value)


@pytest.mark.parametrize(
    ("v2", "v1", "fmt", "bias_key"),
    [
        ("mobileclip2_s2", "mobileclip_s2", "open_clip", "visual.trunk.head.fc.bias"),
        ("mobileclip2_b", "mobileclip_b", "timm", "head.bias"),
    ],
)
def test_trained_bias_into_v1_head_names_the_mobileclip2_variant(
    v2: str, v1: str, fmt: str, bias_key: str
) -> None:
    """Full-size shapes on the meta device; only the head bias holds real (non-zero) numbers."""
    logging.disable(logging.WARNING)
    with torch.device("meta"):
        src, dst = create_model(v2), create_model(v1)
    logging.disable(logging.NOTSET)
    sd = ck.export_state_dict(src, fmt)
    sd[bias_key] = torch.full((512,), 0.0698)
    fake = ck.Checkpoint(sd, fmt, False, "0" * 64, Path("v2.pt"))
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(dst, fake)
    msg = str(ei.value)
    assert f"{bias_key} is non-zero (max |b| = 0.0698)" in msg and "has no bias" in msg
    assert msg.endswith(f"(it fits: {v2})")


@pytest.mark.parametrize("name", BIASED)
def test_fused_checkpoint_keeps_head_bias(name: str, tmp_path: Path) -> None:
    from mobileclip_export.reparam import reparameterize_model

    src = _writer(name)
    fused = reparameterize_model(src)
    _, bias_key = keymaps.image_head_keys(src.state_dict())
    assert torch.equal(fused.state_dict()[bias_key], src.state_dict()[bias_key])
    path = _save(fused.state_dict(), tmp_path / "fused.safetensors")
    m = _quiet_create(name, path)
    assert torch.equal(m.state_dict()[bias_key], src.state_dict()[bias_key])
    x, ids = _inputs(src)
    (img, txt), (ref_img, ref_txt) = _outputs(m, x, ids), _outputs(src, x, ids)
    assert _rel(img, ref_img) <= 1e-5 and _rel(txt, ref_txt) <= 1e-5  # fused vs train-time: fp32 rounding


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# By default the reduced case goes to ExecuTorch only: the other targets convert reduced MobileCLIP2-S4, whose
# head bias moves the embedding far (row cosine 0.43 without it), in tests/test_export_matrix.py's default
# cases, and the loaded model is checked bitwise here. Full size, under -m slow: every target.
@pytest.mark.parametrize(
    ("name", "reduced", "encoders", "only"),
    [
        ("mobileclip2_s0", True, ("image",), ("executorch",)),
        *(pytest.param(n, False, ("image", "text"), None, marks=pytest.mark.slow) for n in BIASED),
    ],
)
def test_trained_head_bias_reaches_every_target(
    name: str, reduced: bool, encoders: tuple, only: tuple | None, tmp_path: Path
) -> None:
    """open_clip checkpoint with a trained head bias -> export_model to every target (``only``: those) in fp32
    -> each artifact in its runtime matches (cosine >= 0.99999) the model create_model loads, which is bitwise
    the writer."""
    from mobileclip_export.export import verify_inputs as VI
    from mobileclip_export.export.pipeline import verify as V
    from mobileclip_export.export.pipeline.api import export_model

    src = _writer(name, reduced=reduced)
    path = _save(ck.export_state_dict(src, "open_clip"), tmp_path / f"{name}.safetensors")
    loaded = _quiet_create(name, path, reduced)
    _, bias_key = keymaps.image_head_keys(src.state_dict())
    for enc in encoders:  # the pipeline's own verification inputs (export seed 0)
        vin = VI.image_inputs(src.image_size, 0) if enc == "image" else VI.text_inputs(src.context_length)
        ref = V.torch_outputs(getattr(src, f"{enc}_encoder"), vin)
        assert np.array_equal(V.torch_outputs(getattr(loaded, f"{enc}_encoder"), vin), ref), enc
        if enc == "image":  # every row: a dropped bias would miss the 0.99999 cosine by far
            assert _row_cosines(ref, ref - src.state_dict()[bias_key].numpy()).max() < 0.999
    del loaded
    targets = list(only or (t for t in all_targets() if t != "web"))  # web ships the onnx backend's files
    res = export_model(
        name,
        targets,
        checkpoint=path,
        encoders=encoders,
        precision="fp32",
        reduced=reduced,
        output_dir=tmp_path,
    )
    assert {a.target for a in res.artifacts} == set(targets) and res.random_init is False
    for a in res.artifacts:
        p = a.parity
        assert a.status == "verified" and p["status"] == "passed", f"{a.target} {a.encoder}: {a.error} {p}"
        assert p["cosine"] >= 0.99999, f"{a.target} {a.encoder}: {p}"
        print(f"{name} {a.target} {a.encoder}: cosine {p['cosine']:.8f} max|diff| {p['max_abs_diff']:.2e}")

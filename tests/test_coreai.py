"""Core AI backend: conversion, parity in the Core AI runtime, multi-function assets, hazard scanner."""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coreai_torch")
pytest.importorskip("coreai.runtime")

from mobileclip_export.errors import ExportFailure, MissingDependencyError, UsageError  # noqa: E402
from mobileclip_export.export.backends.coreai import CoreAITarget  # noqa: E402
from mobileclip_export.export.backends.coreai.forms import LinearAsConv, linears_as_convs  # noqa: E402
from mobileclip_export.export.backends.coreai.hazards import find_coreai_hazards  # noqa: E402
from mobileclip_export.export.parity import compare  # noqa: E402
from mobileclip_export.export.registry import get_target  # noqa: E402
from mobileclip_export.export.spec import (
    EncoderExport,
    TensorSpec,  # noqa: E402
)
from mobileclip_export.export.tolerances import tolerance_for  # noqa: E402

from _toys import TOY_EMBED as EMBED  # noqa: E402
from _toys import DeployToyImage, deploy_toy_text  # noqa: E402
from _toys import toy_ids as _ids  # noqa: E402
from _toys import toy_image_input as _image_input  # noqa: E402

TARGET = CoreAITarget()


def toy_export(kind: str) -> EncoderExport:
    torch.manual_seed({"image": 0, "text_causal": 1, "text_full": 2}[kind])
    embed = (TensorSpec("embedding", (1, EMBED), "float32", "unnormalized embedding"),)
    if kind == "image":
        ins = (TensorSpec("image", (1, 3, 256, 256), "float32", "RGB in [0, 1]"),)
        return EncoderExport(
            "toy",
            "image",
            DeployToyImage().eval(),
            (_image_input(),),
            ins,
            embed,
            {"model": "toy", "encoder": "image", "embed_dim": str(EMBED)},
            image_size=256,
        )
    module = deploy_toy_text(causal=kind == "text_causal").eval()
    ins = (TensorSpec("text", (1, 77), "int32", "token ids"),)
    return EncoderExport(
        "toy",
        "text",
        module,
        (_ids(),),
        ins,
        embed,
        {"model": "toy", "encoder": "text", "embed_dim": str(EMBED)},
    )


def _feed(enc: EncoderExport, n: int = 2) -> np.ndarray:
    return (_image_input(seed=5, n=n) if enc.encoder == "image" else _ids(seed=5, n=n)).numpy()


def _reference(enc: EncoderExport, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([enc.module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


def _check_parity(runner, enc: EncoderExport, precision: str) -> None:
    x = _feed(enc)
    ref, out = _reference(enc, x), runner.run({enc.inputs[0].name: x})
    stats = compare(ref, out)
    assert stats.n_rows == 2
    assert not stats.violations(tolerance_for(precision)), (precision, enc.encoder, stats)
    if precision == "fp32":
        assert stats.cosine >= 0.99999 and stats.max_abs_diff <= 1e-4 * max(stats.ref_max_abs, 1.0), stats
        centered = compare(ref - ref.mean(0), out - out.mean(0))  # the input-dependent part matches too
        assert centered.cosine >= 0.9999, centered


# ---------------------------------------------------------------- conversion + parity


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["image", "text_causal", "text_full"])
def test_toy_export_runs_and_matches_pytorch(tmp_path, kind, precision):
    enc = toy_export(kind)
    before = copy.deepcopy(enc.module.state_dict())
    path = tmp_path / f"toy-{kind}-{precision}.aimodel"
    info = TARGET.export(enc, precision, TARGET.validate(precision, {}), path)
    assert path.is_dir() and (path / "metadata.json").exists()
    # the caller's module is untouched (fp16 converts a copy)
    assert all(torch.equal(before[k], v) for k, v in enc.module.state_dict().items())
    want = "float16" if precision == "fp16" and enc.encoder == "image" else enc.inputs[0].dtype
    assert (
        info.inputs[0].dtype == want
        and info.details["functions"]["main"]["inputs"][0]["name"] == enc.inputs[0].name
    )

    checks = TARGET.structural_checks(path, enc)
    assert checks["problems"] == [], checks["problems"]
    assert checks["functions"] == ["main"]
    assert checks["metadata"]["model"] == "toy" and checks["metadata"]["precision"] == precision
    assert not {"Int64", "Float64"} & set(checks["storage_types"])
    if enc.encoder == "text":
        assert "Int32" in checks["inputs"]["text"]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["creatorDefinedMetadata"]["encoder"] == enc.encoder

    runner = TARGET.load(path, {})
    try:
        assert runner.is_deployment_runtime is False and "not a speed figure" in runner.label
        _check_parity(runner, enc, precision)
    finally:
        runner.close()


def test_multifunction_asset_serves_both_encoders(tmp_path):
    image, text = toy_export("image"), toy_export("text_causal")
    path = tmp_path / "toy-image-text.aimodel"
    opts = TARGET.validate("fp32", {"multifunction": True})
    info = TARGET.export_multifunction([image, text], "fp32", opts, path)
    assert set(info.details["functions"]) == {"encode_image", "encode_text"}
    assert [s.name for s in info.inputs] == ["image", "text"]
    for enc in (image, text):
        checks = TARGET.structural_checks(path, enc)
        assert checks["problems"] == [] and sorted(checks["functions"]) == ["encode_image", "encode_text"]
    meta = TARGET.structural_checks(path, image)["metadata"]
    assert (
        meta["model"] == "toy"
        and meta["encode_image.encoder"] == "image"
        and meta["encode_text.encoder"] == "text"
    )

    runner = TARGET.load(path, opts)
    try:
        _check_parity(runner, image, "fp32")
        _check_parity(runner, text, "fp32")
        with pytest.raises(UsageError, match="no Core AI function takes inputs"):
            runner.run({"pixels": _feed(image)})
    finally:
        runner.close()


def test_multifunction_rejects_duplicate_encoders(tmp_path):
    enc = toy_export("text_full")
    with pytest.raises(UsageError, match="duplicate entry points"):
        TARGET.export_multifunction([enc, enc], "fp32", {}, tmp_path / "x.aimodel")


# ---------------------------------------------------------------- hazard scanner


def _decomposed(module: nn.Module, *args: torch.Tensor) -> torch.export.ExportedProgram:
    import coreai_torch

    return torch.export.export(module.eval(), args).run_decompositions(coreai_torch.get_decomp_table())


class _Pool(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.avg_pool2d(x, 3, 2, **self.kw)


class _Double(nn.Module):
    def forward(self, x):
        return (x.double() * 2).float()


class _Identity64(nn.Module):
    def forward(self, ids):
        return ids.float() * 2


X = torch.rand(1, 4, 9, 9)


@pytest.mark.parametrize(
    "module, args, needle",
    [
        (_Pool(padding=1, count_include_pad=False), (X,), "count_include_pad=False"),
        (_Pool(ceil_mode=True), (X,), "ceil_mode=True crashes"),
        (_Double(), (X,), "float64"),
        (_Identity64(), (torch.ones(1, 77, dtype=torch.int64),), "rejects 64-bit inputs"),
    ],
    ids=["count_include_pad", "ceil_mode", "float64", "int64_input"],
)
def test_hazard_scanner_catches_known_traps(module, args, needle):
    hazards = find_coreai_hazards(_decomposed(module, *args))
    assert hazards and all(needle in h for h in hazards), hazards


@pytest.mark.parametrize("module", [_Pool(padding=1), _Pool(padding=0, count_include_pad=False)])
def test_hazard_scanner_passes_safe_pooling(module):
    assert find_coreai_hazards(_decomposed(module, X)) == []


def test_export_fails_with_the_hazard_reason(tmp_path):
    enc = EncoderExport(
        "toy",
        "image",
        _Pool(padding=1, count_include_pad=False),
        (X,),
        (TensorSpec("image", tuple(X.shape), "float32"),),
        (TensorSpec("embedding", (1, 4, 4, 4), "float32"),),
        {},
    )
    with pytest.raises(ExportFailure, match="count_include_pad=False"):
        TARGET.export(enc, "fp32", {}, tmp_path / "bad.aimodel")
    assert not (tmp_path / "bad.aimodel").exists()


@pytest.mark.parametrize("kind", ["image", "text_causal", "text_full"])
def test_toy_graphs_have_no_hazards(kind):
    enc = toy_export(kind)
    assert find_coreai_hazards(_decomposed(enc.module, *enc.example_inputs)) == []


# ---------------------------------------------------------------- options, precision, dependencies


def test_registry_options_and_precision_errors():
    assert get_target("coreai") is get_target("aimodel")
    assert TARGET.default_precision == "fp16" and TARGET.extension == ".aimodel"
    assert TARGET.validate("fp16", {}) == {"multifunction": False, "batch_size": None}
    with pytest.raises(UsageError, match="choices: True, False"):
        TARGET.validate("fp32", {"multifunction": "maybe"})
    with pytest.raises(UsageError, match="--compute-units is not supported"):
        TARGET.validate("fp32", {"compute_units": "all"})
    spec = {o.name: o for o in TARGET.options}["multifunction"]
    assert spec.type("true") is True and spec.type("0") is False
    with pytest.raises(ValueError):
        spec.type("perhaps")


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "coreai_torch", None)  # import now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'mobileclip-export\[coreai\]'"):
        TARGET.export(toy_export("text_full"), "fp32", {}, tmp_path / "x.aimodel")


# ---------------------------------------------------------------- real MobileCLIP graphs


from _toys import (  # noqa: E402
    IMAGE_FAMILIES,
    TEXT_FAMILIES,
)
from _toys import randomized_encoder_export as real_export  # noqa: E402
from _toys import structured_inputs as real_inputs  # noqa: E402


@pytest.mark.parametrize(
    "name, encoder",
    [(n, "image") for n in IMAGE_FAMILIES] + [(n, "text") for n in TEXT_FAMILIES],
)
def test_mobileclip_graphs_have_no_coreai_hazards(name, encoder):
    enc = real_export(name, encoder)
    assert find_coreai_hazards(_decomposed(enc.module, *enc.example_inputs)) == []


def _real_roundtrip(tmp_path, enc: EncoderExport, precision: str) -> tuple[float, object]:
    path = tmp_path / f"{enc.model_name}-{enc.encoder}-{precision}.aimodel"
    t0 = time.perf_counter()
    TARGET.export(enc, precision, {}, path)
    seconds = time.perf_counter() - t0
    assert TARGET.structural_checks(path, enc)["problems"] == []
    x = real_inputs(enc.encoder, enc.inputs[0].shape[-1])
    runner = TARGET.load(path, {})
    try:
        ref, out = _reference(enc, x), runner.run({enc.inputs[0].name: x})
    finally:
        runner.close()
    stats = compare(ref, out)
    assert not stats.violations(tolerance_for(precision)), stats
    if precision == "fp32":  # the input-dependent part of the embedding matches too
        centered = compare(ref - ref.mean(0), out - out.mean(0))
        assert centered.cosine >= 0.9999, centered
    return seconds, stats


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_reduced_s0_parity_fp16(tmp_path, encoder):
    _real_roundtrip(tmp_path, real_export("mobileclip_s0", encoder), "fp16")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, encoder",
    [(n, "image") for n in IMAGE_FAMILIES] + [(n, "text") for n in TEXT_FAMILIES],
)
def test_reduced_families_parity_fp32(tmp_path, name, encoder):
    _real_roundtrip(tmp_path, real_export(name, encoder), "fp32")


@pytest.mark.parametrize(
    "precision",
    ["fp32", pytest.param("fp16", marks=pytest.mark.slow)],  # fp16 reference runtime: ~2 min
)
@pytest.mark.parametrize("encoder", ["image", "text"])
@pytest.mark.slow  # the CI main job exports and verifies full-size S0 to every target
def test_full_size_s0(tmp_path, encoder, precision):
    enc = real_export("mobileclip_s0", encoder, reduced=False)
    assert find_coreai_hazards(_decomposed(enc.module, *enc.example_inputs)) == []
    seconds, stats = _real_roundtrip(tmp_path, enc, precision)
    print(
        f"full S0 {encoder} {precision}: export {seconds:.1f} s, cosine {stats.cosine:.7f}, "
        f"max|diff| {stats.max_abs_diff:.2e}"
    )


# ---------------------------------------------------------------- graph form: linears as 1x1 convolutions


@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_as_conv_equals_linear(shape, bias):
    torch.manual_seed(0)
    lin = nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    torch.testing.assert_close(LinearAsConv(lin)(x), lin(x), rtol=1e-5, atol=1e-6)


def test_linears_as_convs_copies_and_replaces_every_linear():
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Sequential(nn.Linear(16, 8)))
    out = linears_as_convs(model)
    assert not any(isinstance(m, nn.Linear) for m in out.modules())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2  # the input is untouched
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-6)


def test_fp16_linears_accumulate_like_convolutions(tmp_path):
    """The reference runtime accumulates an fp16 matmul in fp16 (max|diff| 1.4e-2 on this layer) and runs it
    ~300x slower than the same layer as a 1x1 convolution (7.5e-4): the exported graph must use the latter."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(512, 2048)).eval()
    nn.init.normal_(module[0].weight, std=0.02)
    x = torch.randn(1, 77, 512)
    spec = (TensorSpec("x", (1, 77, 512), "float32", "tokens"),)
    out = (TensorSpec("y", (1, 77, 2048), "float32", "features"),)
    enc = EncoderExport("toy", "text", module, (x,), spec, out, {"model": "toy", "encoder": "text"})
    path = tmp_path / "linear.aimodel"
    TARGET.export(enc, "fp16", TARGET.validate("fp16", {}), path)
    runner = TARGET.load(path, {})
    try:
        got = runner.run({"x": x.numpy()})
    finally:
        runner.close()
    with torch.no_grad():
        want = module(x.half().float()).numpy()
    assert np.abs(got - want).max() < 3e-3


def test_attention_modules_keep_their_projections():
    """nn.MultiheadAttention reads ``out_proj.weight`` as a matrix: it must stay a linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True)).eval()
    out = linears_as_convs(model)
    assert isinstance(out[0], LinearAsConv) and isinstance(out[1].out_proj, nn.Linear)
    x = torch.randn(2, 5, 8)
    y = out[0](x)
    torch.testing.assert_close(out[1](y, y, y)[0], model[1](y, y, y)[0])

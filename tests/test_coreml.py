"""Core ML backend: export reduced encoders of every block family, reload, check structure and metadata, and
compare numerically through the coreml.mil NumPy executor (Core ML prediction itself is macOS-only)."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobileclip_export.errors import ExportFailure, UsageError
from mobileclip_export.export.backends.coreml import fp16_guard
from mobileclip_export.export.backends.coreml.convert import convert, input_plan
from mobileclip_export.export.parity import compare
from mobileclip_export.export.registry import get_target
from mobileclip_export.export.spec import EncoderExport, RuntimeUnavailable, TensorSpec
from mobileclip_export.export.tolerances import tolerance_for

from _toys import reduced_encoder_export

ct = pytest.importorskip("coremltools")


@pytest.fixture(scope="module")
def target():
    return get_target("coreml")


# per-module cache: encoders are shared by this module's tests only
_reduced = cache(reduced_encoder_export)


def _verify_inputs(enc: EncoderExport) -> np.ndarray:
    if enc.encoder == "image":
        s = enc.image_size
        rng = np.random.default_rng(1)
        flat = np.full((1, 3, s, s), 0.5, np.float32)  # flat images expose normalization/bias mistakes
        return np.concatenate([rng.random((1, 3, s, s), dtype=np.float32), flat])
    from mobileclip_export.models.tokenizer import tokenize

    return tokenize(["", "a dog on a red sofa next to a window"], 77).astype(np.int32)


@torch.no_grad()
def _reference(module: nn.Module, x: np.ndarray) -> np.ndarray:
    return np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


# (model, encoder): mci0 / mci3 (per-channel std: normalization stays in graph) / ViT-B image;
# MCt (RepMixer text), causal base-512 and non-causal base-768 text.
FAMILIES = [
    ("mobileclip_s0", "image"),
    # MCi3 repeats reduced MCi4 (widths aside), which tests/test_export_matrix.py converts by default
    pytest.param("mobileclip_s3", "image", marks=pytest.mark.slow),
    ("mobileclip_b", "image"),
    ("mobileclip_s0", "text"),
    ("mobileclip_b", "text"),
    ("mobileclip_s3", "text"),
]


# ------------------------------------------------------------------ names, options, dependencies
def test_names_aliases_and_defaults(target):
    assert get_target("mlpackage") is target and get_target("IOS") is target
    assert (target.name, target.order, target.extension, target.extra) == (
        "coreml",
        10,
        ".mlpackage",
        "coreml",
    )
    opts = target.validate("fp16", {})
    assert opts == {
        "minimum_deployment_target": "iOS17",
        "compute_units": "all",
        "batch_sizes": None,
        "calibration_images": None,
        "naming": "default",
        "keep_fp": None,
        "auto_keep_fp": False,
    }
    assert target.validate("fp32", {"batch_sizes": "8, 1,4"})["batch_sizes"] == (1, 4, 8)
    assert set(target.versions()) >= {"coremltools", "torch"}


@pytest.mark.parametrize(
    "precision, options, needle",
    [
        ("fp16", {"compute_units": "gpu"}, "cpu_and_ne"),
        ("fp16", {"minimum_deployment_target": "iOS15"}, "iOS17"),
        ("fp16", {"batch_sizes": "0,4"}, "positive integers"),
        ("fp16", {"batch_sizes": "1,x"}, "positive integers"),
    ],
)
def test_invalid_requests_are_usage_errors(target, precision, options, needle):
    with pytest.raises(UsageError) as err:
        target.validate(precision, options)
    assert needle in str(err.value)


def test_a_broken_executor_import_is_an_error_not_a_skip(target, monkeypatch, tmp_path):
    """Our own executor failing to import is a bug: load raises instead of calling the runtime unavailable."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "mobileclip_export.export.backends.coreml.mil", None)  # import fails
    with pytest.raises(ImportError):
        target.load(tmp_path / "x.mlpackage", {})


# ------------------------------------------------------------------ every family: structure, metadata, parity
@pytest.mark.parametrize("model_name, encoder", FAMILIES)
def test_fp32_export_structure_metadata_parity(target, tmp_path, model_name, encoder):
    enc, train = _reduced(model_name, encoder)
    path = tmp_path / f"{model_name}-{encoder}.mlpackage"
    info = target.export(enc, "fp32", target.validate("fp32", {}), path)
    assert path.is_dir() and info.path == path

    checks = target.structural_checks(path, enc)
    assert checks["problems"] == []
    assert "batch_norm" not in checks["op_census"] and checks["op_count"] > 10
    assert checks["compute_dtypes"].get("FLOAT16", 0) == 0  # fp32 means fp32 everywhere
    assert checks["weight_elements"] > 0.9 * sum(p.numel() for p in enc.module.parameters())
    inp, out = checks["inputs"][0], checks["outputs"][0]
    assert out == {
        "name": "embedding",
        "kind": "tensor",
        "shape": [1, enc.outputs[0].shape[1]],
        "dtype": "FLOAT32",
    }
    if encoder == "image":
        assert inp == {
            "name": "image",
            "kind": "image",
            "shape": [1, 3, enc.image_size, enc.image_size],
            "color_space": "RGB",
        }
    else:
        assert inp == {"name": "text", "kind": "tensor", "shape": [1, 77], "dtype": "INT32"}

    # Metadata read back by coremltools from the saved package.
    model = ct.models.MLModel(str(path), skip_model_load=True)
    meta = model.user_defined_metadata
    assert meta["model"] == model_name and meta["embed_dim"] == enc.metadata["embed_dim"]
    assert model.author.startswith("mobileclip-export") and model.short_description and model.license
    if encoder == "image":
        pre = json.loads(meta["preprocessing"])
        assert [round(v, 6) for v in pre["mean"]] == [round(v, 6) for v in enc.normalize_mean]
        assert "scale" in model.input_description["image"].lower()
    else:
        assert json.loads(meta["tokenizer"]) == json.loads(enc.metadata["tokenizer"])
        assert "token ids" in model.input_description["text"]

    x = _verify_inputs(enc)
    runner = target.load(path, {})
    assert runner.is_deployment_runtime is False and "not Apple's runtime" in runner.label
    stats = compare(_reference(train, x), runner.run({enc.inputs[0].name: x}))
    assert stats.cosine >= 0.99999, stats
    assert stats.violations(tolerance_for("fp32")) == [], stats


@pytest.mark.parametrize("model_name, encoder", [("mobileclip_s0", "image"), ("mobileclip_s0", "text")])
def test_fp16_export_parity_and_typing(target, tmp_path, model_name, encoder):
    enc, train = _reduced(model_name, encoder)
    path = tmp_path / "m.mlpackage"
    info = target.export(enc, "fp16", target.validate("fp16", {}), path)
    assert info.details["fp32_ops"] == [] and any("no op overflows" in n for n in info.notes)
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == [] and checks["compute_dtypes"]["FLOAT16"] > 10
    x = _verify_inputs(enc)
    stats = compare(_reference(train, x), target.load(path, {}).run({enc.inputs[0].name: x}))
    assert stats.violations(tolerance_for("fp16")) == [], stats
    assert stats.cosine < 1.0 - 1e-9  # fp16 rounding is really emulated (a check that can fail)


# ------------------------------------------------------------------ image preprocessing folded into ImageType
class _ToyImage(nn.Module):
    """A tiny image encoder that normalizes internally like the real ones; ``.model`` is the network."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.model = nn.Sequential(
            nn.Conv2d(3, 8, 4, 4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _toy_enc(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), module: nn.Module | None = None) -> EncoderExport:
    m = (module or _ToyImage(mean, std)).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return EncoderExport(
        "toy",
        "image",
        m,
        (x,),
        (TensorSpec("image", (1, 3, 32, 32), "float32"),),
        (TensorSpec("embedding", (1, 6), "float32"),),
        {"model": "toy"},
        32,
        mean,
        std,
        getattr(m, "model", None),
    )


@pytest.mark.parametrize(
    "mean, std, scale, bias, folded",
    [
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1 / 127.5, [-1.0, -1.0, -1.0], True),
        ((0.1, 0.2, 0.3), (0.25, 0.25, 0.25), 1 / 63.75, [-0.4, -0.8, -1.2], True),
        ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 1 / 255, [0.0, 0.0, 0.0], False),
    ],
)
def test_normalization_folded_when_std_is_shared(target, tmp_path, mean, std, scale, bias, folded):
    enc = _toy_enc(mean, std)
    path = tmp_path / "toy.mlpackage"
    info = target.export(enc, "fp32", target.validate("fp32", {}), path)
    assert info.details["image_scale"] == pytest.approx(scale, rel=1e-9)
    assert info.details["image_bias"] == pytest.approx(bias, abs=1e-9)
    assert ("folded" in info.notes[0]) is folded
    census = target.structural_checks(path, enc)["op_census"]
    assert ("sub" in census) is not folded  # in-graph normalization leaves its sub op
    x = np.concatenate(
        [
            np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32),
            np.full((1, 3, 32, 32), 0.5, np.float32),
        ]
    )
    stats = compare(_reference(enc.module, x), target.load(path, {}).run({"image": x}))
    assert stats.cosine >= 0.99999 and stats.max_abs_diff <= 1e-5 * max(1.0, stats.ref_max_abs), stats


def test_leftover_batch_norm_is_a_structural_problem(target, tmp_path):
    # BN after a ReLU cannot be folded into the conv by coremltools: it stays a batch_norm op.
    net = nn.Sequential(
        nn.Conv2d(3, 8, 4, 4),
        nn.ReLU(),
        nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    ).eval()
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1)
        net[2].running_var.uniform_(0.5, 2)
    enc = _toy_enc((0.0,) * 3, (1.0,) * 3, module=net)
    path = tmp_path / "bn.mlpackage"
    target.export(enc, "fp32", target.validate("fp32", {}), path)
    checks = target.structural_checks(path, enc)
    assert checks["op_census"].get("batch_norm") == 1
    assert any("batch_norm" in p for p in checks["problems"])


def test_structural_checks_catch_wrong_io(target, tmp_path):
    enc = _toy_enc()
    path = tmp_path / "toy.mlpackage"
    target.export(enc, "fp32", target.validate("fp32", {}), path)
    wrong = EncoderExport(
        "toy",
        "image",
        enc.module,
        enc.example_inputs,
        (TensorSpec("pixels", (1, 3, 64, 64), "float32"),),
        enc.outputs,
        {"model": "toy", "extra": "x"},
        64,
    )
    problems = target.structural_checks(path, wrong)["problems"]
    assert any("pixels" in p for p in problems) and any("64x64" in p for p in problems)
    assert any("extra" in p for p in problems)
    assert target.structural_checks(tmp_path / "missing.mlpackage", enc)["problems"]


@pytest.mark.parametrize(
    "deployment, spec_version", [("iOS16", 7), ("iOS17", 8), ("iOS18", 9), ("macOS15", 9)]
)
def test_minimum_deployment_target_sets_the_spec_version(target, tmp_path, deployment, spec_version):
    enc = _toy_enc()
    path = tmp_path / "toy.mlpackage"
    opts = target.validate("fp16", {"minimum_deployment_target": deployment, "compute_units": "cpu_and_ne"})
    info = target.export(enc, "fp16", opts, path)
    assert info.details["minimum_deployment_target"] == deployment
    assert target.structural_checks(path, enc)["spec_version"] == spec_version
    meta = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    assert (
        meta["coreml.minimum_deployment_target"] == deployment
        and meta["coreml.compute_units"] == "cpu_and_ne"
    )


# ------------------------------------------------------------------ enumerated batch sizes
def test_enumerated_batch_sizes(target, tmp_path):
    enc, _ = _reduced("mobileclip_b", "text")
    path = tmp_path / "text-b.mlpackage"
    info = target.export(enc, "fp16", target.validate("fp16", {"batch_sizes": "1,4"}), path)
    assert info.inputs[0].shape == (4, 77)
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == []
    assert checks["inputs"][0]["enumerated_shapes"] == [[1, 77], [4, 77]]
    try:
        runner = target.load(path, {})
    except RuntimeUnavailable as err:
        assert "reference executor cannot run this program" in str(err)
    else:
        x = _verify_inputs(enc)
        stats = compare(_reference(_reduced("mobileclip_b", "text")[1], x), runner.run({"text": x}))
        assert stats.violations(tolerance_for("fp16")) == [], stats

    img = _toy_enc()
    path = tmp_path / "img-b.mlpackage"
    info = target.export(img, "fp32", target.validate("fp32", {"batch_sizes": "1,2"}), path)
    assert info.inputs[0].dtype == "float32" and "ImageType carries one image" in info.notes[0]
    inp = target.structural_checks(path, img)["inputs"][0]
    assert inp["kind"] == "tensor" and inp["enumerated_shapes"] == [[1, 3, 32, 32], [2, 3, 32, 32]]


def test_fixed_batch_program_runs_in_padded_chunks(target, tmp_path):
    enc, train = _reduced("mobileclip_s0", "text")
    path = tmp_path / "text-2.mlpackage"
    info = target.export(enc, "fp32", target.validate("fp32", {"batch_sizes": "2"}), path)
    assert info.inputs[0].shape == (2, 77)
    assert target.structural_checks(path, enc)["inputs"][0]["shape"] == [2, 77]
    from mobileclip_export.models.tokenizer import tokenize

    x = tokenize(["", "a dog", "a photo of a cat on a chair"], 77).astype(
        np.int32
    )  # 3 rows: one chunk padded
    stats = compare(_reference(train, x), target.load(path, {}).run({"text": x}))
    assert stats.n_rows == 3 and stats.violations(tolerance_for("fp32")) == [], stats


# ------------------------------------------------------------------ fp16 overflow guard
class _Hot(nn.Module):
    """A residual stream beyond fp16's 65504 ahead of a LayerNorm: the classic Core ML fp16 NaN."""

    def __init__(self):
        super().__init__()
        self.conv, self.ln, self.head = nn.Conv2d(3, 16, 4, 4), nn.LayerNorm(16), nn.Linear(16, 6)
        with torch.no_grad():
            self.conv.weight.uniform_(0.5, 1.0)
            self.conv.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2) * 3000.0
        return self.head(self.ln(h + h).mean(1))


def test_fp16_overflow_guard_keeps_hot_ops_in_fp32(target, tmp_path):
    from mobileclip_export.export.backends.coreml.mil import load_program

    torch.manual_seed(0)
    enc = _toy_enc((0.0,) * 3, (1.0,) * 3, module=_Hot())
    x = enc.example_inputs[0].numpy()
    ref = _reference(enc.module, x)
    with torch.no_grad():
        assert enc.module.conv(torch.from_numpy(x)).abs().max().item() * 6000 > 65504

    # Negative control: plain fp16 conversion really is broken on this model.
    plain = tmp_path / "plain.mlpackage"
    opts = target.validate("fp16", {})
    convert(enc, input_plan(enc, None), "fp16", opts, set()).save(str(plain))
    assert not np.isfinite(load_program(plain).run({"image": x * 255.0})["embedding"]).all()

    path = tmp_path / "guarded.mlpackage"
    info = target.export(enc, "fp16", opts, path)
    assert info.details["fp32_ops"] and any("kept" in n and "fp32" in n for n in info.notes)
    meta = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    assert meta["coreml.fp32_ops"] == ",".join(info.details["fp32_ops"])
    checks = target.structural_checks(path, enc)
    assert checks["problems"] == [] and checks["compute_dtypes"]["FLOAT16"] > 0  # still mostly fp16
    stats = compare(ref, target.load(path, {}).run({"image": x}))
    assert stats.violations(tolerance_for("fp16")) == [], stats


def test_fp16_overflow_that_cannot_be_fixed_fails(target, tmp_path, monkeypatch):
    monkeypatch.setattr(fp16_guard, "find_fp16_overflows", lambda path, feeds: ["no_such_op_cast_fp16"])
    with pytest.raises(ExportFailure, match="--precision fp32"):
        target.export(_toy_enc(), "fp16", target.validate("fp16", {}), tmp_path / "x.mlpackage")


def test_converter_error_is_export_failure(target, tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x.flatten(1)).abs()  # complex numbers: no Core ML conversion

    enc = _toy_enc(module=Bad())
    with pytest.raises(ExportFailure, match="coremltools failed to convert the image encoder"):
        target.export(enc, "fp32", target.validate("fp32", {}), tmp_path / "bad.mlpackage")


def test_artifact_lands_exactly_at_path(target, tmp_path):
    path = tmp_path / "sub" / "name.partial.mlpackage"
    path.parent.mkdir()
    target.export(_toy_enc(), "fp32", target.validate("fp32", {}), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["name.partial.mlpackage"]
    assert (path / "Manifest.json").exists()
    assert Path(path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size > 0

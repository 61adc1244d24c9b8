"""The NumPy reference executor for Core ML ML Programs (export/backends/coreml/mil).

Packages are produced here with coremltools directly (torch.export -> run_decompositions({}) -> ct.convert),
so these tests do not depend on the Core ML target. Each parity test asserts numbers against PyTorch; the
corruption and overflow tests assert that a broken package is caught and the culprit op is named.
"""

from __future__ import annotations

import functools
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mobileclip_export.export.backends.coreml.mil import (
    FeedError,
    Program,
    ProgramLoadError,
    UnsupportedOpError,
    compare_programs,
    find_fp16_overflows,
    first_divergence,
    fp16_overflow_events,
    load_program,
    register_op,
    supported_ops,
    torch_comparisons,
)
from mobileclip_export.export.backends.coreml.mil.ir import Graph, OpNode, VarInfo
from mobileclip_export.export.parity import compare
from mobileclip_export.export.tolerances import tolerance_for

ct = pytest.importorskip("coremltools")

FP32, FP16 = tolerance_for("fp32"), tolerance_for("fp16")


# ---------------------------------------------------------------- helpers


_EXPORTED: dict[tuple[int, tuple[int, ...]], Any] = {}


def _export(module: nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    """torch.export once per (module, input shape): the fp32 and fp16 conversions share it."""
    key = (id(module), tuple(example[0].shape))
    if key not in _EXPORTED:
        _EXPORTED[key] = (module, torch.export.export(module.eval(), example).run_decompositions({}))
    return _EXPORTED[key][1]


def convert(
    tmp: Path,
    name: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    *,
    precision: str = "fp32",
    image: dict[str, Any] | None = None,
    target: str = "iOS17",
    op_selector: Any = None,
) -> Path:
    """Convert like the Core ML backend does and save ``<tmp>/<name>.mlpackage``."""
    ep = _export(module, example)
    x = example[0]
    if image is not None:
        inp = ct.ImageType(name="image", shape=tuple(x.shape), **image)
    elif x.dtype in (torch.int32, torch.int64):
        inp = ct.TensorType(name="text", shape=tuple(x.shape), dtype=np.int32)
    else:
        inp = ct.TensorType(name="x", shape=tuple(x.shape), dtype=np.float32)
    if precision == "fp32":
        cp = ct.precision.FLOAT32
    else:
        cp = ct.transform.FP16ComputePrecision(op_selector) if op_selector else ct.precision.FLOAT16
    ml = ct.convert(
        ep,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, target),
        compute_precision=cp,
        inputs=[inp],
        outputs=[ct.TensorType(name="embedding")],
        skip_model_load=True,
    )
    path = tmp / f"{name}.mlpackage"
    ml.save(str(path))
    return path


def feeds_for(prog: Program, x: torch.Tensor, pixel_scale: float = 255.0) -> dict[str, np.ndarray]:
    inp = prog.inputs[0]
    arr = x.numpy()
    return {inp.name: arr * pixel_scale if inp.kind == "image" else arr}


def torch_out(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(x).float().numpy()


def assert_parity(ref: np.ndarray, out: np.ndarray, precision: str) -> Any:
    stats = compare(ref, np.asarray(out, np.float32))
    tol = FP32 if precision == "fp32" else FP16
    assert stats.violations(tol) == [], stats
    return stats


def single_op_graph(op_type: str, inputs: dict[str, Any], out_dtype: str = "fp32", n_out: int = 1) -> Program:
    """A one-op program whose inputs are all constants (op-level tests without coremltools)."""
    consts = {f"c_{k}": (v if isinstance(v, str) else np.asarray(v)) for k, v in inputs.items()}
    ins: dict[str, str | tuple[str, ...]] = {}
    for k, v in inputs.items():
        if isinstance(v, list) and v and isinstance(v[0], np.ndarray):  # variadic (concat values)
            for i, item in enumerate(v):
                consts[f"c_{k}_{i}"] = item
            del consts[f"c_{k}"]
            ins[k] = tuple(f"c_{k}_{i}" for i in range(len(v)))
        else:
            ins[k] = f"c_{k}"
    outs = tuple(VarInfo(f"y{i}", out_dtype, None) for i in range(n_out))
    graph = Graph(
        inputs={}, outputs=tuple(o.name for o in outs), ops=[OpNode(op_type, "op0", ins, outs)], consts=consts
    )
    return Program(graph, fp16_emulation=out_dtype == "fp16")


def run_op(op_type: str, **inputs: Any) -> np.ndarray:
    return single_op_graph(op_type, inputs).run({})["y0"]


RNG = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- registry and errors


def test_registry_rejects_duplicate_registration() -> None:
    assert {"conv", "layer_norm", "scaled_dot_product_attention", "gather_nd", "band_part"} <= set(
        supported_ops()
    )
    with pytest.raises(ValueError, match="already registered"):
        register_op("conv")(lambda ctx, a: None)


def test_unsupported_op_is_named_with_its_location() -> None:
    with pytest.raises(UnsupportedOpError, match=r"^unsupported op frobnicate \(at op op0\)$"):
        single_op_graph("frobnicate", {"x": randn(2)})


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ProgramLoadError, match="no such file"):
        load_program(tmp_path / "missing.mlpackage")
    (tmp_path / "junk.mlpackage").mkdir()
    with pytest.raises(ProgramLoadError):
        load_program(tmp_path / "junk.mlpackage")


# ---------------------------------------------------------------- op semantics vs PyTorch (no coremltools)

CONV_CASES = [  # (cin, cout, k, groups, stride, dilation, pad_type, pad)
    (4, 6, 3, 1, 1, 1, "custom", [1, 1, 1, 1]),
    (4, 8, 3, 2, 2, 1, "valid", None),
    (6, 6, 7, 6, 1, 1, "same", None),  # depthwise, large kernel
    (6, 12, 3, 6, 2, 2, "custom", [2, 1, 0, 3]),  # depthwise multiplier 2, asymmetric pads
    (4, 4, 3, 1, 2, 1, "same", None),  # same with stride: torch-style asymmetric pad
    (4, 4, 1, 1, 1, 1, "valid", None),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"g{c[3]}k{c[2]}s{c[4]}d{c[5]}{c[6]}")
def test_conv_matches_torch(case: tuple) -> None:
    cin, cout, k, groups, stride, dil, pad_type, pad = case
    x, w, b = randn(1, cin, 11, 13), randn(cout, cin // groups, k, k), randn(cout)
    kw: dict[str, Any] = {}
    if pad is not None:
        kw["pad"] = np.asarray(pad, np.int32)
    y = run_op(
        "conv",
        x=x,
        weight=w,
        bias=b,
        strides=[stride] * 2,
        dilations=[dil] * 2,
        groups=groups,
        pad_type=pad_type,
        **kw,
    )
    if pad_type == "custom":
        xt = F.pad(torch.from_numpy(x), (pad[2], pad[3], pad[0], pad[1]))
    elif pad_type == "same":  # total = (ceil(n/s)-1)*s + k_eff - n, smaller half first
        pads = []
        for n in (13, 11):
            total = max((-(-n // stride) - 1) * stride + (k - 1) * dil + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        xt = F.pad(torch.from_numpy(x), pads)
    else:
        xt = torch.from_numpy(x)
    ref = F.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), stride, 0, dil, groups).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv1d_pool_and_layout_ops_match_torch() -> None:
    x1 = randn(1, 4, 9)
    w1 = randn(5, 4, 3)
    y = run_op("conv", x=x1, weight=w1, strides=[2], pad_type="custom", pad=np.asarray([1, 1], np.int32))
    np.testing.assert_allclose(
        y, F.conv1d(torch.from_numpy(x1), torch.from_numpy(w1), None, 2, 1).numpy(), rtol=1e-5, atol=1e-5
    )
    x = randn(1, 3, 7, 7)
    xt = torch.from_numpy(x)
    avg = run_op(
        "avg_pool",
        x=x,
        kernel_sizes=[3, 3],
        strides=[2, 2],
        pad_type="custom",
        pad=np.asarray([1, 1, 1, 1], np.int32),
        exclude_padding_from_average=True,
    )
    np.testing.assert_allclose(avg, F.avg_pool2d(xt, 3, 2, 1, count_include_pad=False).numpy(), atol=1e-6)
    mx = run_op("max_pool", x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True)
    np.testing.assert_allclose(mx, F.max_pool2d(xt, 2, 2, ceil_mode=True).numpy())
    # slice_by_index with masks, negative stride and squeeze
    a = randn(4, 5, 6)
    s = run_op(
        "slice_by_index",
        x=a,
        begin=[1, 0, 5],
        end=[3, 0, 0],
        stride=[1, 2, -2],
        begin_mask=[False, True, False],
        end_mask=[False, True, True],
        squeeze_mask=[False, False, False],
    )
    np.testing.assert_array_equal(s, a[1:3, ::2, 5::-2])
    s2 = run_op("slice_by_index", x=a, begin=[2, 0, 0], end=[3, 5, 6], squeeze_mask=[True, False, False])
    np.testing.assert_array_equal(s2, a[2])
    np.testing.assert_array_equal(
        run_op("slice_by_size", x=a, begin=[1, 2, 0], size=[2, -1, 3]), a[1:3, 2:, 0:3]
    )
    # iOS17 reshape: a 0 copies the input dim aligned from the right (the MIL docs' example)
    assert run_op("reshape", x=randn(2, 50), shape=[1, 0, -1, 0]).shape == (1, 1, 2, 50)
    np.testing.assert_array_equal(run_op("reshape", x=a, shape=[0, 0, -1]), a)
    idx = np.array([[0, 1], [3, 4]], np.int32)
    np.testing.assert_array_equal(run_op("gather_nd", x=a, indices=idx), a[[0, 3], [1, 4]])
    np.testing.assert_array_equal(
        run_op("gather", x=a, indices=np.array([2, -1], np.int32), axis=1), a[:, [2, -1]]
    )
    ga = np.array([[[0], [1], [2], [0], [1]]] * 4, np.int32)
    np.testing.assert_array_equal(
        run_op("gather_along_axis", x=a, indices=ga, axis=2), np.take_along_axis(a, ga, 2)
    )
    m = randn(5, 5)
    np.testing.assert_array_equal(run_op("band_part", x=m, lower=-1, upper=0), np.tril(m))
    np.testing.assert_array_equal(run_op("band_part", x=m, lower=0, upper=-1), np.triu(m))
    parts = single_op_graph("split", {"x": a, "split_sizes": np.array([1, 4], np.int32), "axis": 1}, n_out=2)
    outs = parts.run({})
    np.testing.assert_array_equal(outs["y1"], a[:, 1:])
    np.testing.assert_array_equal(
        run_op("pad", x=m, pad=np.array([1, 2, 0, 1], np.int32), mode="reflect"),
        np.pad(m, ((1, 2), (0, 1)), mode="reflect"),
    )
    cat = run_op("concat", values=[a, a * 2], axis=-1, interleave=False)
    np.testing.assert_array_equal(cat, np.concatenate([a, a * 2], -1))


def test_activation_norm_and_attention_ops_match_torch() -> None:
    x = randn(2, 7, 16) * 3
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(run_op("gelu", x=x, mode="EXACT"), F.gelu(xt).numpy(), atol=2e-6)
    np.testing.assert_allclose(
        run_op("gelu", x=x, mode="TANH_APPROXIMATION"), F.gelu(xt, approximate="tanh").numpy(), atol=2e-6
    )
    np.testing.assert_allclose(run_op("erf", x=x), torch.erf(xt).numpy(), atol=1e-6)
    np.testing.assert_allclose(run_op("softmax", x=x, axis=-1), xt.softmax(-1).numpy(), atol=1e-6)
    g, b = randn(16), randn(16)
    ln = run_op("layer_norm", x=x, axes=[-1], gamma=g, beta=b, epsilon=np.float32(1e-5))
    ref = F.layer_norm(xt, (16,), torch.from_numpy(g), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ln, ref, atol=1e-5)
    q, k, v = randn(1, 2, 5, 8), randn(1, 2, 6, 8), randn(1, 2, 6, 8)
    mask = np.tril(np.ones((5, 6), bool))
    y = run_op("scaled_dot_product_attention", query=q, key=k, value=v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        run_op("matmul", x=q, y=k, transpose_y=True), (q @ np.swapaxes(k, -1, -2)), atol=1e-5
    )
    bn = run_op(
        "batch_norm",
        x=randn(1, 3, 2, 2) * 0 + 1,
        mean=np.ones(3, np.float32),
        variance=np.ones(3, np.float32),
        gamma=np.full(3, 2, np.float32),
        beta=np.ones(3, np.float32),
    )
    np.testing.assert_allclose(bn, np.ones((1, 3, 2, 2)), atol=1e-4)


# ---------------------------------------------------------------- converted toy models: op coverage


class ConvZoo(nn.Module):
    """Grouped, depthwise, strided, dilated, 'same' convs + BatchNorm left unfused + pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding="same", groups=8)
        self.g = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=4)
        self.bn = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        y = torch.sigmoid(self.dw(y)) * y
        y = F.avg_pool2d(F.gelu(self.g(y), approximate="tanh"), 2)
        y = F.max_pool2d(y, 2, ceil_mode=True).mean((2, 3))
        return self.fc(self.bn(y))


class TensorZoo(nn.Module):
    """Layout/math: split/concat/slice/transpose/pad/tile/einsum/pow/sqrt/rsqrt/clip/erf/tanh/where."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1, 4, 12]
        a, b = x.split([5, 7], dim=-1)
        y = torch.cat([b, a], -1).permute(0, 2, 1)[:, 1:, :]  # [1, 11, 4]
        y = F.pad(y, (0, 0, 0, 1)).reshape(1, 4, 12)
        y = torch.einsum("bij,kj->bik", y, self.fc.weight) + x.pow(2) + torch.sqrt(x.abs() + 1)
        y = torch.rsqrt(y.abs() + 1) * torch.clamp(y, -0.5, 0.5) + torch.erf(y) - torch.tanh(y)
        y = torch.where(y > 0, y, 0.1 * y).tile(1, 2, 1)
        z = (y - y.mean(-1, keepdim=True)) / y.amax(-1, keepdim=True).clamp_min(1e-3)
        return z.sum(1) + y.max(1).values


class AttentionText(nn.Module):
    """Embedding gather, causal SDPA (one op on iOS18), argmax pooling with gather, LayerNorm, projection."""

    def __init__(self, vocab: int = 100, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.randn(dim, 8) / 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        q, k, v = self.qkv(x).reshape(1, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, -1, 16)
        x = self.ln(x + a)
        eot = x[torch.arange(x.shape[0]), ids.argmax(-1)]
        return eot @ self.proj


def _toy_cases() -> list[tuple[str, nn.Module, torch.Tensor, dict | None, str, set[str]]]:
    torch.manual_seed(0)
    conv = ConvZoo()
    with torch.no_grad():
        conv.bn.running_mean.uniform_(-0.5, 0.5)
        conv.bn.running_var.uniform_(0.5, 2)
    ids = torch.randint(1, 99, (1, 12), dtype=torch.int32)
    ids[0, 7] = 99
    return [
        (
            "conv",
            conv,
            torch.rand(1, 3, 24, 24),
            {"scale": 1 / 255},
            "iOS17",
            {"conv", "batch_norm", "avg_pool", "max_pool", "gelu", "sigmoid", "relu"},
        ),
        (
            "tensor",
            TensorZoo(),
            torch.randn(1, 4, 12),
            None,
            "iOS17",
            {
                "split",
                "concat",
                "transpose",
                "slice_by_index",
                "pad",
                "tile",
                "pow",
                "sqrt",
                "rsqrt",
                "clip",
                "erf",
                "tanh",
                "select",
            },
        ),
        (
            "attn",
            AttentionText(),
            ids,
            None,
            "iOS18",
            {"gather", "scaled_dot_product_attention", "layer_norm", "reduce_argmax"},
        ),
    ]


TOY = _toy_cases()


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml_mil")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", TOY, ids=[c[0] for c in TOY])
def test_toy_models_match_torch(tmp_mod: Path, case: tuple, precision: str) -> None:
    name, module, x, image, target, expect_ops = case
    path = convert(
        tmp_mod, f"toy_{name}_{precision}", module, (x,), precision=precision, image=image, target=target
    )
    prog = load_program(path)
    census = prog.graph.op_counts()
    assert expect_ops <= set(census), sorted(expect_ops - set(census))
    assert prog.fp16_emulation == (precision == "fp16")
    out = prog.run(feeds_for(prog, x))["embedding"]
    assert out.dtype == (np.float16 if precision == "fp16" else np.float32)
    assert_parity(torch_out(module, x), out, precision)


def test_image_preprocessing_scale_and_bias_come_from_the_program(tmp_mod: Path, caplog: Any) -> None:
    """Mean/std folded into ImageType scale/bias: fed 0..255 pixels, the program reproduces the normalizing
    module; the IODesc reports the folded values; a [0, 1] feed (double normalization) is warned about."""
    torch.manual_seed(1)
    mean, std = torch.tensor([0.48, 0.45, 0.40]), 0.27
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 5)).eval()

    class Normalized(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return net((x - mean.reshape(1, 3, 1, 1)) / std)

    x = torch.rand(1, 3, 16, 16)
    bias = [float(-m / std) for m in mean]
    path = convert(tmp_mod, "norm_img", net, (x,), image={"scale": 1 / (255 * std), "bias": bias})
    prog = load_program(path)
    inp = prog.inputs[0]
    assert (inp.name, inp.kind, inp.color_space) == ("image", "image", "RGB")
    assert inp.scale == pytest.approx(1 / (255 * std), rel=1e-6)
    assert inp.bias == pytest.approx(bias, rel=1e-6)
    assert_parity(torch_out(Normalized(), x), prog.run({"image": x.numpy() * 255})["embedding"], "fp32")
    with caplog.at_level(logging.WARNING):
        wrong = prog.run({"image": x.numpy()})["embedding"]
    assert "normalized twice" in caplog.text
    assert compare(torch_out(Normalized(), x), wrong).cosine < 0.999


def test_feed_errors_name_the_problem(tmp_mod: Path) -> None:
    _, module, ids, _, target, _ = TOY[2]
    prog = load_program(convert(tmp_mod, "feeds", module, (ids,), target=target))
    assert prog.inputs[0].dtype == "int32" and prog.inputs[0].shape == (1, 12)
    with pytest.raises(FeedError, match="missing: \\['text'\\], unknown: \\['ids'\\]"):
        prog.run({"ids": ids.numpy()})
    with pytest.raises(FeedError, match="shape"):
        prog.run({"text": ids.numpy()[:, :5]})
    with pytest.raises(FeedError, match="must be integer"):
        prog.run({"text": ids.numpy().astype(np.float32)})


# ---------------------------------------------------------------- MobileCLIP block families (reduced)


@functools.lru_cache(maxsize=None)
def _mobileclip(name: str, reduced: bool) -> nn.Module:
    from mobileclip_export.models import create_model
    from mobileclip_export.reparam import reparameterize_model
    from mobileclip_export.reparam.verify import randomize_bn_and_layer_scales

    return reparameterize_model(randomize_bn_and_layer_scales(create_model(name, reduced=reduced), seed=0))


def _text_ids(n: int = 77, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(1, n, dtype=torch.int32)
    ids[0, :9] = torch.randint(1, 49000, (9,), generator=g, dtype=torch.int32)
    ids[0, 0], ids[0, 9] = 49406, 49407  # SOT ... EOT (argmax pooling picks EOT)
    return ids


# (variant, encoder): every image block family (MCi0-2 RepMixer/MobileOne, MCi3/4 attention+RepCPE stages,
# ViT-B/16, MobileCLIP2-B's ViT) and both text families (MCt RepMixer text, base transformer).
REDUCED = [
    ("mobileclip_s0", "image"),
    ("mobileclip_s0", "text"),
    ("mobileclip_s1", "text"),
    ("mobileclip_s3", "image"),
    ("mobileclip_b", "image"),
    ("mobileclip2_b", "image"),
]


# fp32 for every family; fp16 (the same ops at half precision) for S0's image and text by default, the other
# families' fp16 programs under -m slow, and MCi3 too: reduced MCi4 (the same blocks, wider) goes through this
# executor in tests/test_export_matrix.py's default Core ML case.
def _default_family(variant: str, precision: str) -> bool:
    return variant != "mobileclip_s3" and (precision == "fp32" or variant == "mobileclip_s0")


_FAMILY_CASES = [
    pytest.param(v, e, p, id=f"{v}-{e}-{p}", marks=[] if _default_family(v, p) else [pytest.mark.slow])
    for v, e in REDUCED
    for p in ("fp32", "fp16")
]


@pytest.mark.parametrize(("variant", "encoder", "precision"), _FAMILY_CASES)
def test_reduced_block_families_match_torch(
    tmp_mod: Path, variant: str, encoder: str, precision: str
) -> None:
    model = _mobileclip(variant, reduced=True)
    module = model.image_encoder if encoder == "image" else model.text_encoder
    torch.manual_seed(0)
    x = torch.rand(1, 3, model.image_size, model.image_size) if encoder == "image" else _text_ids()
    image = {"scale": 1 / 255} if encoder == "image" else None
    path = convert(
        tmp_mod,
        f"{variant}_{encoder}_{precision}",
        module,
        (x,),
        precision=precision,
        image=image,
        target="iOS18",
    )
    prog = load_program(path)
    assert "batch_norm" not in prog.graph.op_counts()  # reparameterized graphs carry no BatchNorm
    stats = assert_parity(torch_out(module, x), prog.run(feeds_for(prog, x))["embedding"], precision)
    logging.getLogger(__name__).info("%s %s %s: %s", variant, encoder, precision, stats)
    # op-by-op matching against the FX graph: no false alarm on a correct package, and real coverage
    comps = torch_comparisons(prog, feeds_for(prog, x), module, (x,))
    assert [c.op_name for c in comps if c.violations] == []
    float_ops = [op for op in prog.graph.ops if op.outputs[0].dtype in ("fp16", "fp32")]
    assert len(comps) >= 0.9 * len(float_ops), (len(comps), len(float_ops))
    assert comps[-1].output == "embedding"


# ---------------------------------------------------------------- corrupted packages


def _weight_blob(path: Path, const_name: str) -> tuple[Path, int, np.dtype, tuple[int, ...]]:
    """(weight file, data offset, dtype, shape) of a blob-stored const, read from the package's spec."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and op.outputs[0].name == const_name:
            val = op.attributes["val"]
            blob = val.blobFileValue
            dtype = {10: np.float16, 11: np.float32}[val.type.tensorType.dataType]
            shape = tuple(d.constant.size for d in val.type.tensorType.dimensions)
            wfile = path / "Data" / "com.apple.CoreML" / "weights" / Path(blob.fileName).name
            with open(wfile, "rb") as f:
                f.seek(blob.offset)
                sentinel, _, _, data_offset = struct.unpack("<IIQQ", f.read(24))
            assert sentinel == 0xDEADBEEF
            return wfile, data_offset, np.dtype(dtype), shape
    raise KeyError(const_name)


def permute_weight_in_package(path: Path, const_name: str) -> None:
    """Reverse the output-channel order of a weight inside the saved weight.bin (in place)."""
    wfile, off, dtype, shape = _weight_blob(path, const_name)
    n = int(np.prod(shape)) * dtype.itemsize
    with open(wfile, "r+b") as f:
        f.seek(off)
        w = np.frombuffer(f.read(n), dtype).reshape(shape[0], -1)
        f.seek(off)
        f.write(np.ascontiguousarray(w[::-1]).tobytes())


def set_const_in_package(path: Path, const_name: str, ints: list[int]) -> None:
    """Overwrite an immediate int32 const (e.g. a transpose perm) in the saved program."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and op.outputs[0].name == const_name:
            op.attributes["val"].immediateValue.tensor.ints.values[:] = ints
            (path / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec.SerializeToString())
            return
    raise KeyError(const_name)


@pytest.fixture(scope="module")
def s0_reduced_image(tmp_mod: Path) -> tuple[nn.Module, torch.Tensor, Path]:
    model = _mobileclip("mobileclip_s0", reduced=True)
    x = torch.rand(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(3))
    path = convert(
        tmp_mod, "s0r_image_clean", model.image_encoder, (x,), image={"scale": 1 / 255}, target="iOS18"
    )
    return model.image_encoder, x, path


def test_permuted_weight_is_caught_and_its_conv_named(s0_reduced_image: tuple, tmp_path: Path) -> None:
    module, x, clean = s0_reduced_image
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(clean, bad)
    prog = load_program(clean)
    convs = [
        op
        for op in prog.graph.ops
        if op.type == "conv"
        and op.inputs["weight"] in prog.graph.consts
        and prog.graph.consts[op.inputs["weight"]].shape[0] > 1
    ]
    target = convs[len(convs) // 2]  # a conv in the middle of the network
    permute_weight_in_package(bad, target.inputs["weight"])
    bad_prog = load_program(bad)
    feeds = feeds_for(bad_prog, x)
    ref = torch_out(module, x)
    assert_parity(ref, prog.run(feeds)["embedding"], "fp32")  # the clean package passes
    assert compare(ref, bad_prog.run(feeds)["embedding"]).violations(FP32)  # the corrupted one does not
    assert first_divergence(prog, feeds, module, (x,)) is None
    rep = first_divergence(bad_prog, feeds, module, (x,), FP32)
    assert rep is not None and rep.op_name == target.name and rep.op_type == "conv", rep
    assert rep.last_good is not None and rep.last_good.index < prog.graph.ops.index(target)
    assert target.name in str(rep)
    # without PyTorch: the clean package as reference
    rep2 = compare_programs(prog, bad_prog, feeds, FP32)
    assert rep2 is not None and rep2.op_name == target.name


class PermuteHead(nn.Module):
    """conv -> NHWC permute -> LayerNorm over channels -> linear; H == W == C so a wrong perm keeps shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.fc(F.gelu(self.ln(y)).flatten(1))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_swapped_transpose_perm_is_caught_and_named(tmp_path: Path, precision: str) -> None:
    torch.manual_seed(2)
    module, x = PermuteHead().eval(), torch.rand(1, 3, 8, 8)
    path = convert(tmp_path, "perm", module, (x,), precision=precision, image={"scale": 1 / 255})
    prog = load_program(path)
    (tr,) = [op for op in prog.graph.ops if op.type == "transpose"]
    perm_const = tr.inputs["perm"]
    assert list(prog.graph.consts[perm_const]) == [0, 2, 3, 1]
    set_const_in_package(path, perm_const, [0, 3, 2, 1])  # swap H and W
    bad = load_program(path)
    feeds = feeds_for(bad, x)
    ref = torch_out(module, x)
    stats = compare(ref, np.asarray(bad.run(feeds)["embedding"], np.float32))
    assert stats.violations(FP32 if precision == "fp32" else FP16), stats
    rep = first_divergence(bad, feeds, module, (x,))
    assert rep is not None and (rep.op_name, rep.op_type) == (tr.name, "transpose"), rep
    assert rep.last_good is not None and rep.last_good.op_type == "conv"


def test_fp16_vs_fp32_program_comparison(tmp_mod: Path) -> None:
    _, module, x, image, target, _ = TOY[0]
    p32 = load_program(convert(tmp_mod, "cmp32", module, (x,), image=image, target=target))
    p16 = load_program(convert(tmp_mod, "cmp16", module, (x,), precision="fp16", image=image, target=target))
    feeds = feeds_for(p32, x)
    assert compare_programs(p32, p16, feeds, FP16) is None
    # an impossible tolerance shows the matching works op by op (it names the first fp16-rounded op)
    strict = type(FP32)(min_cosine=1.0, max_abs_rel=0.0, min_psnr_db=1e9)
    rep = compare_programs(p32, p16, feeds, strict)
    assert rep is not None and rep.n_compared >= 1


# ---------------------------------------------------------------- fp16 overflow


class HotLayerNorm(nn.Module):
    """A projection whose outputs reach a few thousand (fine in fp16: max 65504) feeding a LayerNorm: the
    squared deviations (~1e7) overflow fp16 inside the LayerNorm though its input and output are in range."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.ln = nn.LayerNorm(32)
        self.out = nn.Linear(32, 8)
        with torch.no_grad():
            self.up.weight.mul_(400.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(self.up(x)))


def test_layer_norm_fp16_overflow_is_found_and_fp32_layer_norm_removes_it(tmp_path: Path) -> None:
    torch.manual_seed(4)
    module, x = HotLayerNorm().eval(), torch.randn(1, 4, 16)
    with torch.no_grad():
        ln_in = module.up(x)
    assert (
        256 < float((ln_in - ln_in.mean(-1, keepdim=True)).abs().max()) and float(ln_in.abs().max()) < 65504
    )
    ref = torch_out(module, x)

    p16 = load_program(convert(tmp_path, "hot16", module, (x,), precision="fp16"))
    feeds = {"x": x.numpy()}
    overflows = find_fp16_overflows(p16, feeds)
    (ln_op,) = [op for op in p16.graph.ops if op.type == "layer_norm"]
    assert overflows == [ln_op.name]
    (ev,) = fp16_overflow_events(p16, feeds)
    assert ev.what == "(x-mean)^2" and ev.max_abs_fp32 > 65504
    bad = compare(ref, np.asarray(p16.run(feeds)["embedding"], np.float32))
    assert bad.violations(FP16), bad  # the overflow silently wrecks the embedding (no inf/NaN at the output)
    assert np.isfinite(p16.run(feeds)["embedding"]).all()
    # the same program without fp16 rounding is fine: the graph is right, only the precision is not
    assert_parity(ref, p16.with_fp16_emulation(False).run(feeds)["embedding"], "fp16")

    # coremltools' op_selector keeps layer_norm in fp32 (casts around it): no overflow, parity restored
    keep = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type != "layer_norm")
    fixed = load_program(
        convert(tmp_path, "hot16_fixed", module, (x,), precision="fp16", op_selector=keep.op_selector)
    )
    (ln_fixed,) = [op for op in fixed.graph.ops if op.type == "layer_norm"]
    assert ln_fixed.outputs[0].dtype == "fp32" and fixed.fp16_emulation
    assert find_fp16_overflows(fixed, feeds) == []
    assert_parity(ref, fixed.run(feeds)["embedding"], "fp16")


class Blowup(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1000.0  # |x| up to ~300 -> 3e5: overflows fp16 at this op
        return torch.tanh(y - y.mean()) + y.softmax(-1)


def test_overflowing_op_is_named_not_its_consumers(tmp_path: Path) -> None:
    x = torch.linspace(-300, 300, 64).reshape(1, 64)
    p16 = load_program(convert(tmp_path, "blowup", Blowup(), (x,), precision="fp16"))
    names = find_fp16_overflows(p16, {"x": x.numpy()})
    assert len(names) == 1
    (op,) = [op for op in p16.graph.ops if op.name == names[0]]
    assert op.type == "mul"
    out = p16.run({"x": x.numpy()})["embedding"]
    assert not np.isfinite(out).all()  # inf propagates to NaN downstream, but only the origin is reported


# ---------------------------------------------------------------- full-size MobileCLIP-S0


@pytest.fixture(scope="module")
def s0_full(tmp_mod: Path) -> dict[str, Any]:
    """Full-size S0 (reparameterized), converted once per session for both encoders and precisions."""
    model = _mobileclip("mobileclip_s0", reduced=False)
    x = torch.rand(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(5))
    ids = _text_ids()
    out: dict[str, Any] = {}
    for enc, module, inp in (("image", model.image_encoder, x), ("text", model.text_encoder, ids)):
        for prec in ("fp32", "fp16"):
            image = {"scale": 1 / 255} if enc == "image" else None
            path = convert(
                tmp_mod, f"s0_{enc}_{prec}", module, (inp,), precision=prec, image=image, target="iOS18"
            )
            out[(enc, prec)] = (module, inp, path)
    return out


@pytest.mark.slow  # the main job of .ci/run verifies full-size S0 fp16 in the executor on every CI run
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("encoder", ["image", "text"])
def test_full_s0_matches_torch(s0_full: dict, encoder: str, precision: str) -> None:
    module, x, path = s0_full[(encoder, precision)]
    prog = load_program(path)
    assert len(prog.graph.ops) > 50
    stats = assert_parity(torch_out(module, x), prog.run(feeds_for(prog, x))["embedding"], precision)
    if precision == "fp32":
        assert stats.cosine >= 0.99999
    else:
        assert find_fp16_overflows(prog, feeds_for(prog, x)) == []

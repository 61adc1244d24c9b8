"""The NumPy Core ML executor runs compressed programs: every ``constexpr_*`` op that coremltools.optimize
emits (iOS17 attribute form, iOS18 input form, chains) matches coremltools' own decompression exactly, and a
compressed program runs like the program coremltools decompresses back to dense weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mobileclip_export.export.backends.coreml.mil import load_program
from mobileclip_export.export.backends.coreml.mil._ops_constexpr import unpack_bits

ct = pytest.importorskip("coremltools")
cto = pytest.importorskip("coremltools.optimize.coreml")


class _Toy(nn.Module):
    """Conv stem, depthwise, pointwise and a linear head: the weight shapes of MobileCLIP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)
        self.head = nn.Linear(64, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))
        return self.head(y.mean(dim=(2, 3)))


def _lin(**kw: Any) -> Any:
    return cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(weight_threshold=200, **kw)


def _pal(**kw: Any) -> Any:
    return cto.palettize_weights, cto.OpPalettizerConfig(weight_threshold=200, **kw)


# (name, deployment target, compression) -> the constexpr op forms coremltools 9 emits for each mode.
CASES = {
    "ios17-int8-per-channel": ("iOS17", _lin(mode="linear_symmetric")),
    "ios17-uint8-asymmetric": ("iOS17", _lin(mode="linear", dtype="uint8")),
    "ios17-lut8": ("iOS17", _pal(nbits=8)),
    "ios17-lut6": ("iOS17", _pal(nbits=6)),
    "ios17-lut4": ("iOS17", _pal(nbits=4)),
    "ios17-lut2": ("iOS17", _pal(nbits=2)),
    "ios18-int8-per-channel": ("iOS18", _lin(mode="linear_symmetric")),
    "ios18-int4-per-block": ("iOS18", _lin(dtype="int4", granularity="per_block", block_size=16)),
    "ios18-lut4-grouped-channel": ("iOS18", _pal(nbits=4, granularity="per_grouped_channel", group_size=16)),
    "ios18-lut6-per-tensor": ("iOS18", _pal(nbits=6)),
    "ios18-lut4-channel-scale-chain": ("iOS18", _pal(nbits=4, enable_per_channel_scale=True)),
    "ios18-lut-vector": ("iOS18", _pal(nbits=4, cluster_dim=2)),
}


@pytest.fixture(scope="module")
def fp_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    m = _Toy().eval()
    ep = torch.export.export(m, (torch.rand(1, 3, 8, 8),)).run_decompositions({})
    out = {}
    for tgt in ("iOS17", "iOS18"):
        for prec, cp in (("fp32", ct.precision.FLOAT32), ("fp16", ct.precision.FLOAT16)):
            out[(tgt, prec)] = ct.convert(
                ep,
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, tgt),
                compute_precision=cp,
                inputs=[ct.TensorType(name="x", shape=(1, 3, 8, 8), dtype=np.float32)],
                skip_model_load=True,
            )
    return out


def _compress(fp_models: dict[str, Any], case: str, precision: str, tmp: Path) -> Path:
    tgt, (fn, op_cfg) = CASES[case]
    model = fn(fp_models[(tgt, precision)], cto.OptimizationConfig(global_config=op_cfg))
    path = tmp / f"{case}-{precision}.mlpackage"
    model.save(str(path))
    return path


def _coremltools_values(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """output var -> (op type, value) for each constexpr op, decompressed by coremltools' PyMIL ops."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(str(path))
    prog = milproto_load(spec, spec.specificationVersion, str(path / "Data/com.apple.CoreML/weights"))
    out: dict[str, tuple[str, np.ndarray]] = {}
    for op in prog.functions["main"].operations:
        if not op.op_type.startswith("constexpr_"):
            continue
        lut = getattr(op, "lut", None)
        if op.op_type == "constexpr_lut_to_dense" and lut is not None and lut.val is None:
            # coremltools' own value inference stops at a chained LUT; feed it the upstream op's value.
            axis = None if op.vector_axis is None else op.vector_axis.val
            val = op.decompress(op.indices.val, out[lut.name][1], axis)
        else:
            val = op.materialized_val_inference()
        out[op.outputs[0].name] = (op.op_type, np.asarray(val))
    return out


_FP16_DEFAULT = ("ios17-lut6", "ios18-int8-per-channel", "ios18-lut4-channel-scale-chain")


@pytest.mark.parametrize(
    ("case", "precision"),
    [(c, "fp32") for c in CASES]
    + [pytest.param(c, "fp16", marks=() if c in _FP16_DEFAULT else pytest.mark.slow) for c in CASES],
)
def test_constexpr_ops_match_coremltools_decompression_exactly(
    fp_models: dict[str, Any], case: str, precision: str, tmp_path: Path
) -> None:
    path = _compress(fp_models, case, precision, tmp_path)
    expected = _coremltools_values(path)
    assert expected, f"{case}: coremltools emitted no constexpr op"
    prog = load_program(path)
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    trace = prog.trace({"x": x})
    for name, (op_type, want) in expected.items():
        got = trace[name]
        assert got.shape == want.shape, (case, op_type, name)
        assert got.dtype == want.dtype, (case, op_type, name, got.dtype, want.dtype)
        assert np.array_equal(got, want), (case, op_type, name, float(np.max(np.abs(got - want))))
    # The whole program runs like coremltools' dense decompression of it.
    dense = load_program(cto.decompress_weights(ct.models.MLModel(str(path), skip_model_load=True)))
    assert not any(op.type.startswith("constexpr_") for op in dense.graph.ops)
    out, ref = prog.run({"x": x}), dense.run({"x": x})
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


def test_case_table_covers_every_emitted_form(fp_models: dict[str, Any], tmp_path: Path) -> None:
    """The table above really produces both lut_to_dense forms, the affine and blockwise ops and a chain."""
    seen: set[str] = set()
    cases = (
        "ios17-lut4",
        "ios17-int8-per-channel",
        "ios18-lut4-channel-scale-chain",
        "ios18-lut6-per-tensor",
    )
    for case in cases:
        prog = load_program(_compress(fp_models, case, "fp32", tmp_path))
        produced = prog.graph.producers()
        for op in prog.graph.ops:
            if op.type.startswith("constexpr_"):
                seen.add(f"{op.type}:{case[:5]}")
                if any(isinstance(v, str) and v in produced for v in op.inputs.values()):
                    seen.add("chain")
    assert seen >= {
        "constexpr_lut_to_dense:ios17",
        "constexpr_lut_to_dense:ios18",
        "constexpr_affine_dequantize:ios17",
        "constexpr_blockwise_shift_scale:ios18",
        "chain",
    }, seen


def test_unpack_bits_is_lsb_first() -> None:
    from coremltools.optimize._utils import pack_elements_into_bits

    vals = np.random.default_rng(0).integers(0, 256, 101)
    for nbits in (1, 2, 4, 6, 8):
        v = (vals % (1 << nbits)).astype(np.uint8)
        packed = pack_elements_into_bits(v, nbits)
        np.testing.assert_array_equal(unpack_bits(packed, nbits, v.size), v)


def test_constexpr_results_are_cached_per_program(
    fp_models: dict[str, Any], tmp_path: Path, caplog: Any
) -> None:
    prog = load_program(_compress(fp_models, "ios17-lut4", "fp32", tmp_path))
    x = np.zeros((1, 3, 8, 8), np.float32)
    with caplog.at_level(logging.WARNING):
        a = prog.run({"x": x})
    n = len(prog._folded)
    assert n == sum(op.type.startswith("constexpr_") for op in prog.graph.ops) > 0
    b = prog.run({"x": x})
    assert len(prog._folded) == n
    np.testing.assert_array_equal(a[next(iter(a))], b[next(iter(b))])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "palettize4"])
def test_full_size_s0_compressed_program_matches_its_dense_decompression(
    precision: str, tmp_path: Path
) -> None:
    """Full-size S0 image encoder: the compressed program through our constexpr ops equals, bit for bit, the
    program coremltools decompresses back to dense fp16 weights (its own dequantized reference)."""
    from mobileclip_export.export.registry import get_target

    from _toys import randomized_encoder_export

    enc = randomized_encoder_export("mobileclip_s0", "image", reduced=False)
    path = tmp_path / f"s0-{precision}.mlpackage"
    get_target("coreml").export(enc, precision, {}, path)
    prog = load_program(path)
    dense = load_program(cto.decompress_weights(ct.models.MLModel(str(path), skip_model_load=True)))
    feeds = {prog.inputs[0].name: np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32) * 255}
    out, ref = prog.run(feeds), dense.run(feeds)
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])

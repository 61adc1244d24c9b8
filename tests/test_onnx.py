"""ONNX backend: parity vs PyTorch, I/O contract, metadata, structure (no BatchNormalization), options."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from mobileclip_export.errors import UsageError
from mobileclip_export.export.backends.onnx.target import OnnxTarget, _set_io_names
from mobileclip_export.export.parity import compare
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.export.spec import EncoderExport, TensorSpec

from _toys import ToyCLIP, toy_spec, use_toy_models


def _enc(encoder: str, module: torch.nn.Module, size: int = 64) -> EncoderExport:
    if encoder == "image":
        ex = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)),)
        ins = (TensorSpec("image", (1, 3, size, size), "float32"),)
    else:
        ids = torch.zeros(1, 77, dtype=torch.int32)
        ids[0, :4] = torch.tensor([49406, 320, 1929, 49407])
        ex = (ids,)
        ins = (TensorSpec("text", (1, 77), "int32"),)
    return EncoderExport(
        "mobileclip_s0",
        encoder,
        module,
        ex,
        ins,
        (TensorSpec("embedding", (1, 32), "float32"),),
        {"model": "mobileclip_s0", "encoder": encoder},
    )


@pytest.fixture(scope="module")
def toy() -> ToyCLIP:
    return ToyCLIP(toy_spec(), seed=3)


@pytest.mark.parametrize("precision,max_rel", [("fp32", 1e-5), ("fp16", 2e-2)])
@pytest.mark.parametrize("encoder", ["image", "text"])
def test_export_matches_torch(tmp_path, toy, encoder, precision, max_rel) -> None:
    t = OnnxTarget()
    module = toy.image_encoder if encoder == "image" else toy.text_encoder
    enc = _enc(encoder, module)
    path = tmp_path / f"m-{encoder}.onnx"
    opts = t.validate(precision, {})
    info = t.export(enc, precision, opts, path)
    assert path.is_file() and not list(tmp_path.glob("*.data")), "weights must be embedded in one file"
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == [encoder]
    assert [o.name for o in model.graph.output] == ["embedding"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model"] == "mobileclip_s0" and meta["precision"] == precision
    assert info.details["opset"] == 18 and model.opset_import[0].version == 18
    if encoder == "text":
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    runner = t.load(path, opts)
    x = enc.example_inputs[0]
    got = runner.run({encoder: x.numpy()})
    with torch.no_grad():
        ref = module(x).numpy()
    stats = compare(ref, got)
    assert stats.max_abs_diff <= max_rel * stats.ref_max_abs, stats
    assert stats.cosine > (0.99999 if precision == "fp32" else 0.999), stats
    assert t.structural_checks(path, enc)["problems"] == []


def test_dynamic_batch(tmp_path, toy) -> None:
    t = OnnxTarget()
    enc = _enc("image", toy.image_encoder)
    path = tmp_path / "dyn.onnx"
    opts = t.validate("fp32", {"dynamic_batch": True})
    info = t.export(enc, "fp32", opts, path)
    assert info.inputs[0].shape[0] == -1
    x = torch.rand(3, 3, 64, 64)
    got = t.load(path, opts).run({"image": x.numpy()})
    with torch.no_grad():
        ref = toy.image_encoder(x).numpy()
    assert got.shape == (3, 32)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_structural_check_flags_batchnorm(tmp_path) -> None:
    toy_bn = ToyCLIP(toy_spec(), batchnorm=True)
    t = OnnxTarget()
    enc = _enc("image", toy_bn.image_encoder)
    path = tmp_path / "bn.onnx"
    t.export(enc, "fp32", t.validate("fp32", {}), path)
    checks = t.structural_checks(path, enc)
    assert checks["n_batchnorm"] >= 1
    assert any("BatchNormalization" in p for p in checks["problems"])


def test_io_rename_moves_clashing_inner_value() -> None:
    """The exporter names the token lookup 'embedding'; the graph output must still get that name."""
    from onnx import helper

    g = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["embedding"]),
            helper.make_node("Relu", ["embedding"], ["out0"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out0", onnx.TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(g)
    _set_io_names(m, ["text"], ["embedding"])
    onnx.checker.check_model(m)
    assert m.graph.input[0].name == "text" and m.graph.output[0].name == "embedding"
    assert m.graph.node[0].input[0] == "text" and m.graph.node[1].input[0] != "embedding"


@pytest.mark.parametrize("opset", [17, 30])
def test_bad_opset_is_usage_error(opset) -> None:
    with pytest.raises(UsageError, match="opset"):
        OnnxTarget().validate("fp32", {"opset": opset})


def test_reduced_s0_pipeline_has_no_batchnorm(tmp_path) -> None:
    """The real (reduced) S0 through export_model: verified parity and zero BatchNormalization nodes."""
    res = export_model("mobileclip_s0", "onnx", output_dir=tmp_path, reduced=True)
    assert res.ok, [a.error for a in res.artifacts]
    for a in res.artifacts:
        assert a.status == "verified" and a.parity["cosine"] > 0.99999
        model = onnx.load(str(res.bundle_dir / a.path))
        ops = {n.op_type for n in model.graph.node}
        assert "BatchNormalization" not in ops
        assert a.details["op_census"].get("BatchNormalization", 0) == 0


def test_pipeline_fp16_toy(tmp_path, monkeypatch) -> None:
    use_toy_models(monkeypatch)
    res = export_model(
        "mobileclip_s0", "onnx", precision="fp16", output_dir=tmp_path, options={"dynamic_batch": True}
    )
    assert res.ok
    assert {a.precision for a in res.artifacts} == {"fp16"}
    assert all(a.parity["cosine"] > 0.999 for a in res.artifacts)
    for a in res.artifacts:  # dynamic batch: also verified with all inputs in one call
        assert a.inputs[0]["shape"][0] == -1
        batched = a.parity["by_batch"]["8"]
        assert batched["cosine"] > 0.999 and batched["n_rows"] == 8
        assert a.batch == {"sizes": None, "dynamic": True, "verified": [1, 8]}
    assert (tmp_path / "mobileclip_s0" / "onnx" / "mobileclip_s0-image-fp16.onnx").is_file()


def test_int8_static_text_keeps_attention_matmuls_float(tmp_path) -> None:
    """Static QDQ on a text encoder with randomized layer scales: every weight MatMul gets a dequantized
    int8 weight, the activation x activation MatMuls of attention (q @ k^T, p @ v) stay float (quantized,
    full-size S0 text fell to cosine 0.63), and the artifact stays within the int8-static tolerance."""
    from mobileclip_export.export.tolerances import tolerance_for

    from _toys import randomized_encoder_export, structured_inputs

    enc = randomized_encoder_export("mobileclip_s0", "text")
    target, path = OnnxTarget(), tmp_path / "t8.onnx"
    target.export(enc, "int8-static", target.validate("int8-static", {}), path)
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    dequantized = [n for n in matmuls if any(producer.get(i) == "DequantizeLinear" for i in n.input)]
    layers = sum(1 for name, _ in enc.module.named_modules() if name.endswith("token_mixer"))
    assert len(matmuls) - len(dequantized) == 2 * layers > 0, [n.name for n in matmuls]
    assert len(dequantized) >= 4 * layers  # qkv, out, fc1, fc2 per block
    # bytes: the exporter's per-node provenance is gone; every byte is a tensor's or the graph's
    from mobileclip_export.export.backends.onnx.sizes import size_breakdown

    assert not any(n.metadata_props for n in graph.node)
    sizes = size_breakdown(path)
    roles = sizes["roles"]
    assert sum(r["bytes"] for r in roles.values()) + sizes["graph_bytes"] == path.stat().st_size
    params = enc.module.named_parameters()
    weights = sum(p.numel() for n, p in params if p.dim() >= 2 and "embedding" not in n)
    assert roles["weights_int8"]["elements"] >= weights  # every weight matrix int8 (+ the embedding table)
    assert roles["scales"]["tensors"] == roles["zero_points"]["tensors"] > 0
    ids = structured_inputs("text")
    with torch.no_grad():
        ref = enc.module(torch.from_numpy(ids)).numpy()
    runner = target.load(path, {})
    got = np.concatenate([runner.run({enc.inputs[0].name: ids[i : i + 1]}) for i in range(len(ids))])
    stats = compare(ref, got)
    assert stats.violations(tolerance_for("int8-static")) == [], stats


def test_gelu_is_written_in_the_order_onnxruntime_fuses(tmp_path) -> None:
    """Reduced S0 image: every exact GELU is rewritten (forms.py), onnxruntime's optimized graph holds that
    many fused Gelu nodes and no Erf left, and the artifact still matches the train-time encoder."""
    import onnxruntime as ort

    from _toys import reduced_encoder_export

    enc, train = reduced_encoder_export("mobileclip_s0", "image")
    n_gelu = sum(isinstance(m, torch.nn.GELU) for m in enc.module.modules())
    path = tmp_path / "image.onnx"
    info = OnnxTarget().export(enc, "fp32", OnnxTarget().validate("fp32", {}), path)
    assert n_gelu > 0 and info.details["gelu_in_fusable_order"] == n_gelu
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("Gelu") == n_gelu and "Erf" not in ops, ops
    x = enc.example_inputs[0]
    with torch.no_grad():
        want = train(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert compare(want, got).cosine > 0.99999

"""Mobile image-input layouts (float-nhwc, uint8-nhwc) for onnx, tflite and executorch: the transpose and the
/255 scaling live in the graph, the artifact's input has the asked layout/dtype in its own runtime, and it
matches the train-time model fed the same pixels at fp32 tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobileclip_export.errors import UsageError
from mobileclip_export.export import image_input as ii
from mobileclip_export.export.parity import compare
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.export.registry import get_target
from mobileclip_export.export.verify_inputs import image_inputs
from mobileclip_export.models import create_model


def test_to_layout_is_exact_for_8bit_images() -> None:
    x = image_inputs(32, seed=1).data
    u8 = ii.to_layout(x, "uint8-nhwc")
    assert u8.dtype == np.uint8 and u8.shape == (len(x), 32, 32, 3)
    np.testing.assert_array_equal(u8.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255), x)
    assert ii.to_layout(x, "float-nhwc").shape == (len(x), 32, 32, 3)


def test_option_is_validated_by_each_declaring_target() -> None:
    for name in ("onnx", "tflite", "executorch"):
        assert get_target(name).validate("fp32", {})["image_input"] == "float-nchw"
        with pytest.raises(UsageError, match="float-nchw, float-nhwc, uint8-nhwc"):
            get_target(name).validate("fp32", {"image_input": "nv21"})


def _check_layout(tmp_path, target: str, layout: str) -> None:
    res = export_model(
        "mobileclip_s0", target, encoders="image", output_dir=tmp_path, reduced=True, seed=5,
        options={"image_input": layout},
    )  # fmt: skip
    assert res.ok, [a.error for a in res.artifacts]
    (rec,) = res.artifacts
    size = 256
    want_dtype = "uint8" if layout.startswith("uint8") else "float32"
    assert rec.inputs[0]["shape"] == [1, size, size, 3] and rec.inputs[0]["dtype"] == want_dtype
    assert rec.parity["status"] == "passed" and rec.parity["cosine"] >= 0.99999
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["artifacts"][0]["options"]["image_input"] == layout
    # Independent of the pipeline: feed the raw artifact NHWC bytes in its runtime, compare with the
    # train-time model fed the same pixels as floats.
    raw = get_target(target).load(res.bundle_dir / rec.path, {})  # no layout option: the artifact as is
    x = image_inputs(size, seed=9).data[:3]
    model = create_model("mobileclip_s0", None, seed=5, reduced=True).eval()
    import torch

    with torch.no_grad():
        ref = model.image_encoder(torch.from_numpy(x)).numpy()
    got = np.concatenate([raw.run({"image": ii.to_layout(x[i : i + 1], layout)}) for i in range(len(x))])
    raw.close()
    stats = compare(ref, got)
    assert stats.cosine >= 0.99999 and stats.max_abs_diff <= 1e-3 * stats.ref_max_abs, stats


@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch"])
def test_uint8_nhwc(tmp_path, target) -> None:
    _check_layout(tmp_path, target, "uint8-nhwc")


def test_float_nhwc_onnx(tmp_path) -> None:
    _check_layout(tmp_path, "onnx", "float-nhwc")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_float_nhwc(tmp_path, target) -> None:
    _check_layout(tmp_path, target, "float-nhwc")


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_uint8_nhwc_int8_static_calibrates_in_its_own_layout(tmp_path, target) -> None:
    """Full-integer artifacts calibrate on the shipped photographs; with uint8 NHWC input the calibration
    pixels must arrive as uint8 NHWC too (NCHW floats would not even fit the graph's input)."""
    res = export_model(
        "mobileclip_s0", target, encoders="image", output_dir=tmp_path, reduced=True, seed=5,
        precision="int8-static", options={"image_input": "uint8-nhwc"},
    )  # fmt: skip
    assert res.ok, [a.error for a in res.artifacts]
    (rec,) = res.artifacts
    assert rec.inputs[0]["dtype"] == "uint8" and rec.parity["status"] == "passed", rec.parity
    assert rec.details["accuracy_guard"]["status"] == "passed", rec.details["accuracy_guard"]

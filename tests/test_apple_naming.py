"""`--naming apple` for Core ML: Apple's published file and feature names, read back with coremltools, with
the same numeric parity (NumPy executor) as every Core ML artifact."""

from __future__ import annotations

import json

import pytest

from mobileclip_export.errors import UsageError
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.export.registry import get_target

from _toys import check_snippet_names

ct = pytest.importorskip("coremltools")


def _io(path) -> dict:
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ins = {}
    for f in spec.description.input:
        if f.type.WhichOneof("Type") == "imageType":
            it = f.type.imageType
            space = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace)
            ins[f.name] = ("image", space, it.width, it.height)
        else:
            arr = f.type.multiArrayType
            ins[f.name] = ("array", type(arr).ArrayDataType.Name(arr.dataType), list(arr.shape))
    return {"inputs": ins, "outputs": [o.name for o in spec.description.output]}


@pytest.mark.parametrize("model", ["mobileclip_s0", pytest.param("mobileclip2_s0", marks=pytest.mark.slow)])
def test_apple_naming(tmp_path, model) -> None:
    res = export_model(model, "coreml", output_dir=tmp_path, reduced=True, options={"naming": "apple"})
    assert res.ok, [a.error for a in res.artifacts]
    folder = res.bundle_dir / "coreml"
    image, text = folder / f"{model}_image.mlpackage", folder / f"{model}_text.mlpackage"
    assert image.is_dir() and text.is_dir()
    size = json.loads(res.manifest_path.read_text())["image_size"]
    assert _io(image) == {"inputs": {"image": ("image", "RGB", size, size)}, "outputs": ["final_emb_1"]}
    assert _io(text) == {"inputs": {"text": ("array", "INT32", [1, 77])}, "outputs": ["final_emb_1"]}
    for rec in res.artifacts:
        assert rec.status == "verified" and rec.parity["status"] == "passed"
        assert rec.outputs[0]["name"] == "final_emb_1" and rec.options["naming"] == "apple"
    quoted = check_snippet_names(res.bundle_dir)  # the Swift snippet quotes Apple's names, all in the bundle
    assert {f"{model}_image", f"{model}_text", "image", "text", "final_emb_1"} <= quoted


def test_apple_naming_needs_batch_one() -> None:
    with pytest.raises(UsageError, match="naming apple"):
        get_target("coreml").validate("fp16", {"naming": "apple", "batch_sizes": "1,4"})

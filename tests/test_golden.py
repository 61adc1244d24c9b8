"""Golden vectors: every stored embedding re-runs through the artifact that wrote it and through PyTorch
(the model re-created from the manifest's seed), within the tolerance the index itself states."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_export.export.bundle import golden
from mobileclip_export.export.parity import Tolerance, compare
from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.models import create_model
from mobileclip_export.models.tokenizer import tokenize


def _bundle(tmp_path: Path, targets: str) -> Path:
    res = export_model("mobileclip_s0", targets.split(","), output_dir=tmp_path, reduced=True, seed=3)
    assert res.ok
    return res.bundle_dir


def _check(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    index = json.loads((bundle / golden.INDEX).read_text())
    model = create_model("mobileclip_s0", None, seed=3, reduced=True).eval()
    inputs = golden.load_inputs(bundle, index)
    # The stored tensor is exactly the stored pixels / 255, and the ids are our tokenizer's.
    for img, x in zip(index["images"], inputs["image"]):
        px = np.frombuffer((bundle / img["pixels"]["file"]).read_bytes(), np.uint8).reshape(x.shape[2], -1, 3)
        np.testing.assert_array_equal(x[0], px.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert [t["ids"] for t in index["texts"]] == tokenize([t["text"] for t in index["texts"]]).tolist()
    with torch.no_grad():
        for enc, mod in (("image", model.image_encoder), ("text", model.text_encoder)):
            now = np.concatenate([mod(torch.from_numpy(x)).numpy() for x in inputs[enc]])
            for key, art in index["artifacts"].items():
                if art["encoder"] == enc and art.get("runtime"):
                    stats = compare(now, golden.stored_embeddings(index, enc, key))
                    assert stats.violations(Tolerance(**art["tolerance"])) == [], key
            np.testing.assert_allclose(now, golden.stored_embeddings(index, enc, None), rtol=1e-5, atol=1e-6)
    rechecked = golden.recheck(bundle, manifest)
    assert rechecked and all(r["status"] == "passed" for r in rechecked.values()), rechecked
    return index


@pytest.fixture
def onnx_bundle(reduced_bundle: Path) -> Path:
    return reduced_bundle


def test_golden_vectors_rerun(onnx_bundle) -> None:
    bundle = onnx_bundle
    index = _check(bundle)
    names = {i["name"]: i for i in index["images"]}
    assert {"gradient", "checkerboard"} <= set(names)
    assert set(index["artifacts"]) == {
        "onnx/mobileclip_s0-image-fp32.onnx",
        "onnx/mobileclip_s0-text-fp32.onnx",
    }
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["golden"]["images"]) == set(names) and golden.INDEX in manifest["files"]


def test_natural_photos_use_the_one_preprocessing(tmp_path) -> None:
    pytest.importorskip("skimage")
    from mobileclip_export.models import get_model_spec
    from mobileclip_export.models.preprocess import preprocess_image

    pre = get_model_spec("mobileclip_s0").preprocessing
    imgs = golden.natural_images(pre)
    assert [i.name for i in imgs] == list(golden.NATURAL)
    for img in imgs:
        np.testing.assert_array_equal(img.tensor[0], preprocess_image(img.source, pre))


def test_tampered_golden_embedding_is_caught(onnx_bundle, tmp_path) -> None:
    bundle = Path(shutil.copytree(onnx_bundle, tmp_path / "copy"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    index = json.loads((bundle / golden.INDEX).read_text())
    key = "onnx/mobileclip_s0-text-fp32.onnx"
    index["texts"][0]["artifacts"][key] = [-v for v in index["texts"][0]["artifacts"][key]]
    (bundle / golden.INDEX).write_text(json.dumps(index))
    res = golden.recheck(bundle, manifest)
    assert res[key]["status"] == "failed" and res["onnx/mobileclip_s0-image-fp32.onnx"]["status"] == "passed"


@pytest.mark.slow
def test_golden_vectors_every_target(tmp_path) -> None:
    index = _check(_bundle(tmp_path, "onnx,tflite,executorch,coreml"))
    assert {a["target"] for a in index["artifacts"].values()} == {"onnx", "tflite", "executorch", "coreml"}

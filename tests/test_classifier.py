"""Classifier artifacts (``--classes``): labels baked into the image encoder, checked against the two-tower
computation of the train-time model. Default run: reduced S0 to onnx; ``-m slow``: full-size S0 fp32 to
every target whose runtime (or reference executor) runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobileclip_export.cli import main
from mobileclip_export.errors import UsageError
from mobileclip_export.export.pipeline.classifier import read_classes, top1_check
from mobileclip_export.export.zeroshot import classifier as C
from mobileclip_export.export.zeroshot import prompts as Z

LABELS = [
    "a cat", "a rocket", "a horse", "a cup of coffee", "a motorcycle",
    "an astronaut", "coins", "a page of text", "a man with a camera", "galaxies in deep space",
]  # fmt: skip


def _export(out, targets, *, reduced: bool, labels=LABELS, **kw):
    from mobileclip_export.export import export_model

    return export_model(
        "mobileclip_s0", targets, output_dir=out, reduced=reduced, precision="fp32", encoders="image",
        classes=labels, templates="photo", force=True, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _export(tmp_path_factory.mktemp("clf"), ["onnx"], reduced=True)


def test_onnx_classifier_matches_two_tower(onnx_bundle) -> None:
    rec = next(a for a in onnx_bundle.artifacts if a.encoder == C.CLASSIFIER)
    assert rec.status == "verified", rec.error
    assert rec.parity["cosine"] >= 0.99999 and rec.parity["top1"]["failures"] == 0
    assert rec.parity["top1"]["top1_agree"] == rec.parity["top1"]["n_inputs"] >= 5
    assert [o["name"] for o in rec.outputs] == ["logits", "embedding"] and rec.outputs[0]["shape"] == [1, 10]
    manifest = json.loads(onnx_bundle.manifest_path.read_text())
    assert manifest["classifier"]["labels"] == LABELS and manifest["classifier"]["templates"] == [
        "a photo of a {}."
    ]
    root = onnx_bundle.bundle_dir
    assert (root / "onnx" / C.LABELS_FILE).read_text().splitlines() == LABELS
    emb = np.load(root / "onnx" / C.EMBEDDINGS_FILE)
    assert emb.shape == (10, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    print(
        f"reduced S0 onnx classifier: cosine {rec.parity['cosine']:.9f}, "
        f"max|diff| {rec.parity['max_abs_diff']:.2e}"
    )


def test_both_outputs_in_onnxruntime(onnx_bundle) -> None:
    """Independent of our runner: onnxruntime's two outputs vs the image artifact and the matrix on disk."""
    import onnxruntime as ort

    from mobileclip_export.models import get_model_spec
    from mobileclip_export.models.preprocess import preprocess_batch
    from mobileclip_export.models.samples import sample_paths

    root = onnx_bundle.bundle_dir
    x = preprocess_batch(sample_paths(["chelsea", "camera"]), get_model_spec("mobileclip_s0").preprocessing)
    clf = ort.InferenceSession(str(next(root.glob("onnx/*-classifier-*.onnx"))))
    img = ort.InferenceSession(str(next(root.glob("onnx/*-image-*.onnx"))))
    manifest = json.loads(onnx_bundle.manifest_path.read_text())
    scale, emb_t = manifest["logit_scale"]["value"], np.load(root / "onnx" / C.EMBEDDINGS_FILE)
    for row in x:
        logits, emb = clf.run(None, {"image": row[None]})
        (plain,) = img.run(None, {"image": row[None]})
        np.testing.assert_allclose(emb, plain, atol=1e-6)
        want = scale * (emb / np.linalg.norm(emb)) @ emb_t.T
        np.testing.assert_allclose(logits, want, atol=1e-4)


def test_uint8_nhwc_classifier(onnx_bundle, tmp_path) -> None:
    """``--image-input uint8-nhwc`` reaches classifier artifacts too: Android bitmap bytes in, the same logits
    as the float NCHW classifier (onnxruntime on both files, independent of our runners)."""
    import onnxruntime as ort

    from mobileclip_export.export.image_input import to_layout
    from mobileclip_export.export.verify_inputs import image_inputs

    res = _export(tmp_path, ["onnx"], reduced=True, options={"image_input": "uint8-nhwc"})
    rec = next(a for a in res.artifacts if a.encoder == C.CLASSIFIER)
    assert rec.status == "verified", rec.error
    assert rec.inputs[0]["dtype"] == "uint8" and rec.inputs[0]["shape"][-1] == 3
    u8 = ort.InferenceSession(str(next(res.bundle_dir.glob("onnx/*-classifier-*.onnx"))))
    f32 = ort.InferenceSession(str(next(onnx_bundle.bundle_dir.glob("onnx/*-classifier-*.onnx"))))
    for row in image_inputs(256, seed=3).data[:3]:  # 8-bit pixels: the uint8 artifact sees exactly these
        (want, _) = f32.run(None, {"image": row[None]})
        (got, _) = u8.run(None, {"image": to_layout(row[None], "uint8-nhwc")})
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_module_formula() -> None:
    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 4)
    t = Z.l2_normalize(np.random.default_rng(0).normal(size=(3, 4))).astype(np.float32)
    m = C.ZeroShotClassifier(enc, t, 50.0)
    x = torch.randn(2, 6)
    logits, emb = m(x)
    e = enc(x).detach().numpy()
    np.testing.assert_allclose(emb.detach().numpy(), e, rtol=1e-6)
    np.testing.assert_allclose(logits.detach().numpy(), 50.0 * Z.l2_normalize(e) @ t.T, rtol=1e-5, atol=1e-5)


def test_top1_check_tolerates_only_near_ties() -> None:
    ref = np.array([[1.0, 0.999, 0.0], [2.0, 0.0, 1.0]])
    got = np.array([[0.999, 1.0, 0.0], [0.0, 2.0, 1.0]])  # row 0 flips a near tie, row 1 a clear winner
    r = top1_check(got, ref, max_abs_diff=0.001)
    assert r == {"top1_agree": 0, "n_inputs": 2, "near_ties_flipped": 1, "failures": 1}


def test_cli_usage_errors(capsys, tmp_path) -> None:
    base = ["--model", "mobileclip_s0", "--output-dir", str(tmp_path)]
    assert main([*base, "--templates", "photo"]) == 2
    assert "--templates applies to --classes" in capsys.readouterr().err
    assert main([*base, "--classes", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "l.txt").write_text("a\nb\n")
    assert main([*base, "--classes", str(tmp_path / "l.txt"), "--encoder", "text"]) == 2
    assert "needs --encoder image" in capsys.readouterr().err
    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(UsageError, match="duplicate"):
        read_classes(tmp_path / "dup.txt")


@pytest.mark.slow
def test_full_s0_classifier_every_target(tmp_path) -> None:
    """Acceptance: 10 labels, onnx/tflite/executorch/coreml (+ coreai), cosine >= 0.99999 and same top-1."""
    from mobileclip_export.export.registry import all_targets

    targets = [n for n, t in all_targets().items() if not t.missing_dependencies()]
    result = _export(tmp_path, targets, reduced=False)
    recs = [a for a in result.artifacts if a.encoder == C.CLASSIFIER]
    for rec in recs:
        p = rec.parity
        print(f"S0 fp32 classifier {rec.target}: {rec.status} cosine {p.get('cosine')} max|diff| "
              f"{p.get('max_abs_diff')} top-1 {p.get('top1')} ({p.get('runtime')})")  # fmt: skip
    assert {r.target for r in recs} == set(targets)
    for rec in recs:
        assert rec.status == "verified", (rec.target, rec.error)
        assert rec.parity["cosine"] >= 0.99999 and rec.parity["top1"]["failures"] == 0
        assert rec.parity["top1"]["near_ties_flipped"] == 0

"""``predict``: zero-shot labels and retrieval on exported artifacts vs the train-time PyTorch model.

Default run: a reduced S0 bundle for one target (onnx, fastest to export). ``-m slow``: full-size S0, fp32,
every target whose artifacts run here, on all sample photographs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mobileclip_export.cli import main
from mobileclip_export.errors import UsageError
from mobileclip_export.export.zeroshot import prompts as Z
from mobileclip_export.models.samples import sample_dir, sample_paths, sample_photos

pytest.importorskip("skimage", reason="sample photographs need the zeroshot extra")
LABELS = ["a cat", "a rocket", "a horse", "a cup of coffee", "a man with a camera"]
PHOTOS = ["chelsea", "rocket", "horse", "camera", "page"]  # RGB png, jpg, RGBA, grey, 2:1 grey


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bundle(reduced_bundle):
    return reduced_bundle


def _images() -> list[str]:
    return [str(p) for p in sample_paths(PHOTOS)]


def test_predict_json_matches_pytorch(capsys, bundle) -> None:
    argv = ["--bundle", str(bundle), "--image", *_images(), "--labels", ",".join(LABELS), "--top-k", "5"]
    code, out, err = _cli(capsys, *argv, "--target", "onnx", "--templates", "photo", "--compare", "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout is exactly one JSON document
    assert doc["schema"] == "mobileclip-export.predict/1" and doc["random_init"] is True
    assert doc["labels"] == LABELS and doc["templates"] == ["a photo of a {}."] and doc["top_k"] == 5
    assert [p["path"] for p in doc["images"]] == _images()
    for item in doc["images"]:
        probs = [x["prob"] for x in item["top"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1.0) < 1e-6  # k = all labels
        assert item["same_top1"] and item["max_prob_diff"] <= 1e-3
    assert doc["compare"]["top1_agree"] == len(PHOTOS) and doc["compare"]["max_prob_diff"] <= 1e-3
    # The same request on the pytorch pseudo-target gives the reference probabilities recorded above.
    code, out, err = _cli(capsys, *argv, "--target", "pytorch", "--templates", "photo", "--json")
    assert code == 0, err
    ref = json.loads(out)
    for item, r in zip(doc["images"], ref["images"]):
        assert [x["label"] for x in r["top"]] == [x["label"] for x in item["reference"]["top"]]
        np.testing.assert_allclose(
            [x["prob"] for x in r["top"]], [x["prob"] for x in item["reference"]["top"]], atol=1e-7
        )
    print(f"reduced S0 onnx: max prob diff {doc['compare']['max_prob_diff']:.2e}")


def test_text_output_and_folder_input(capsys, bundle, tmp_path) -> None:
    for name in ("chelsea.png", "rocket.jpg"):
        shutil.copy(sample_dir() / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, _ = _cli(
        capsys, "--bundle", str(bundle.parent), "--target", "onnx", "--image", str(tmp_path),
        "--labels", "a cat,a rocket", "--top-k", "1", "--compare",
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert "RANDOM weights" in lines[0] and "onnxruntime" in lines[0]
    assert lines[2] == "chelsea.png" and lines[4] == "rocket.jpg" and "pytorch" in lines[3]
    assert "top-1 agrees on 2/2 images" in lines[-1]


def test_retrieval_ranks_every_image(capsys, bundle) -> None:
    argv = ["--bundle", str(bundle), "--target", "onnx", "--image", *_images(), "--compare", "--json"]
    code, out, err = _cli(capsys, *argv, "--text", "a photo of a cat", "--text", "a rocket launch")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "mobileclip-export.retrieve/1" and len(doc["queries"]) == 2
    for q in doc["queries"]:
        cos = [x["cosine"] for x in q["ranking"]]
        assert sorted(x["path"] for x in q["ranking"]) == sorted(_images())
        assert cos == sorted(cos, reverse=True) and q["same_order"]
    assert doc["compare"]["max_cosine_diff"] < 1e-5


def test_changed_artifact_is_refused(capsys, bundle, tmp_path) -> None:
    copy = shutil.copytree(bundle, tmp_path / "b")
    image = next(copy.rglob("*-image-*"))
    image.write_bytes(image.read_bytes() + b"\0")
    code, _, err = _cli(
        capsys, "--bundle", str(copy), "--target", "onnx", "--image", *_images()[:1], "--labels", "a,b"
    )
    assert code == 1 and "does not match its manifest" in err and image.name in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--labels", "a,b"], "exactly one of --bundle"),
        (["--bundle", "{b}", "--image", "{img}"], "--labels"),
        (["--bundle", "{b}", "--image", "{img}", "--labels", "a,a"], "duplicate labels: 'a'"),
        (["--bundle", "{b}", "--image", "nope.png", "--labels", "a"], "does not exist"),
        (["--bundle", "{b}", "--image", "{img}", "--labels", "a", "--top-k", "0"], "--top-k"),
        (["--bundle", "{b}", "--image", "{img}", "--labels", "a", "--templates", "x"], "template set"),
        (["--bundle", "{b}", "--image", "{img}", "--labels", "a", "--text", "q"], "exclusive"),
        (["--bundle", "{b}", "--image", "{img}", "--labels", "a", "--precision", "fp16"], "at fp16"),
    ],
)
def test_usage_errors(capsys, bundle, argv, message) -> None:
    if "--image" not in argv:
        argv = [*argv, "--image", "x.png"]
    argv = [a.format(b=bundle, img=_images()[0]) for a in argv]
    code, out, err = _cli(capsys, "--target", "onnx", *argv, "--json")
    assert code == 2 and message in err, err
    assert json.loads(out)["ok"] is False


def test_unknown_target_and_missing_bundle(capsys, tmp_path) -> None:
    code, _, err = _cli(
        capsys, "--bundle", str(tmp_path), "--target", "onnx", "--image", "x", "--labels", "a"
    )
    assert code == 2 and "manifest.json" in err
    img = _images()[0]
    code, _, err = _cli(
        capsys, "--bundle", str(tmp_path), "--target", "nope", "--image", img, "--labels", "a"
    )
    assert code == 2


def test_model_path_rebuilds_the_bundle_model(capsys, bundle) -> None:
    """--model with pytorch builds the same seeded model the bundle was exported from."""
    common = ["--target", "pytorch", "--image", *_images()[:2], "--labels", ",".join(LABELS), "--json"]
    code, out, err = _cli(capsys, "--model", "mobileclip_s0", "--reduced", "--seed", "3", *common)
    assert code == 0, err
    code, out2, err = _cli(capsys, "--bundle", str(bundle), *common)
    assert code == 0, err
    a, b = json.loads(out), json.loads(out2)
    assert a["images"][0]["top"] == b["images"][0]["top"] and a["bundle"] is None


def test_label_embeddings_and_scores() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1000, 8))

    def encode(ids: np.ndarray) -> np.ndarray:  # a fake text encoder: sum of token rows
        return table[ids % 1000].sum(axis=1)

    emb = Z.label_embeddings(encode, ["cat", "dog"], ["a {}.", "the {}!"])
    from mobileclip_export.models.tokenizer import tokenize

    def norm(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    raw = norm(encode(tokenize(["a cat.", "the cat!", "a dog.", "the dog!"])))
    want = norm(np.stack([raw[:2].mean(0), raw[2:].mean(0)]))
    np.testing.assert_allclose(emb, want, rtol=1e-6)
    img = rng.normal(size=(3, 8))
    p = Z.zero_shot_probs(img, emb, 100.0)
    logits = 100.0 * norm(img) @ want.T
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-5)
    assert Z.top_k(p, ["cat", "dog"], 1)[0][0][0] == ["cat", "dog"][int(p[0].argmax())]


def test_labels_and_templates_parsing(tmp_path) -> None:
    (tmp_path / "l.txt").write_text("a cat\n\n  a dog \n")
    assert Z.parse_labels("x, y", tmp_path / "l.txt") == ["x", "y", "a cat", "a dog"]
    assert Z.resolve_templates("none") == ["{}"] and len(Z.resolve_templates(None)) == 7
    (tmp_path / "t.txt").write_text("a {} photo\n")
    assert Z.resolve_templates(str(tmp_path / "t.txt")) == ["a {} photo"]
    with pytest.raises(UsageError, match="exactly one"):
        Z.resolve_templates(["no placeholder"])
    with pytest.raises(UsageError, match="not readable"):
        Z.parse_labels(None, tmp_path / "missing.txt")


def _runnable_targets() -> list[str]:
    from mobileclip_export.export.registry import all_targets

    return [name for name, t in all_targets().items() if not t.missing_dependencies()]


@pytest.fixture(scope="module")
def s0_bundle(tmp_path_factory):
    from mobileclip_export.export import export_model

    out = tmp_path_factory.mktemp("predict_s0")
    result = export_model("mobileclip_s0", _runnable_targets(), output_dir=out, precision="fp32")
    assert result.bundle_dir is not None
    return result


@pytest.mark.slow
@pytest.mark.parametrize("target", _runnable_targets())
def test_full_s0_every_target_matches_pytorch(capsys, s0_bundle, target) -> None:
    """Acceptance: same top-1 as PyTorch on every sample photograph, probabilities within 1e-3 (fp32)."""
    recs = [a for a in s0_bundle.artifacts if a.target == target and a.path]
    if len(recs) < 2 or any(a.status != "verified" for a in recs):
        pytest.skip(f"{target}: artifacts not runnable here ({[a.parity.get('status') for a in recs]})")
    labels = ",".join(p.subject for p in sample_photos()[:6])
    argv = ["--bundle", str(s0_bundle.bundle_dir), "--target", target, "--image", *map(str, sample_paths())]
    code, out, err = _cli(capsys, *argv, "--labels", labels,
                          "--templates", "none", "--top-k", "3", "--compare", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    c = doc["compare"]
    with capsys.disabled():
        print(f"\nS0 fp32 {target}: top-1 {c['top1_agree']}/{c['n_images']}, max prob diff "
              f"{c['max_prob_diff']:.2e}, {doc['seconds']:.1f} s ({doc['runtime']})")  # fmt: skip
    assert c["top1_agree"] == c["n_images"] == len(sample_paths()) and c["max_prob_diff"] <= 1e-3

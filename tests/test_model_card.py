"""The bundle's model card: renders as Markdown (markdown-it-py) with Hugging Face front matter, and every
name its code snippets quote exists in the bundle (a file, a tensor of the manifest, a signature)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobileclip_export.export.pipeline.api import export_model

from _toys import card_code_blocks, check_snippet_names

markdown_it = pytest.importorskip("markdown_it")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card")
    res = export_model(
        "mobileclip_s0",
        ["tflite"],  # its Kotlin section is the card's code snippet (an ONNX artifact adds none)
        output_dir=out,
        reduced=True,
        options={"image_input": "uint8-nhwc"},
    )
    assert res.ok
    return res.bundle_dir


def test_card_renders_with_front_matter(bundle) -> None:
    card = (bundle / "README.md").read_text("utf-8")
    assert card.startswith("---\n")
    front = card.split("\n---\n", 1)[0].splitlines()[1:]
    keys = {line.split(":")[0] for line in front if not line.startswith(" ")}
    assert {"license", "base_model", "library_name", "tags"} <= keys
    assert "license: mit" in front and "base_model: apple/MobileCLIP-S0" in front  # random weights: ours
    html = markdown_it.MarkdownIt().enable("table").render(card.split("\n---\n", 1)[1])
    assert html.count("<table>") == 1 and "<h2>Kotlin (LiteRT)</h2>" in html
    assert "RANDOM weights" in html and "mobileclip_s0-image-fp32.tflite" in html
    assert set(card_code_blocks(card)) == {"kotlin"}
    assert "`uint8` " not in card and "uint8 1x256x256x3" in card  # the layout the artifact really has


def test_snippet_names_exist_in_bundle(bundle) -> None:
    quoted = check_snippet_names(bundle)
    assert {"mobileclip_s0-image-fp32.tflite", "encode_image", "image", "embedding"} <= quoted


def test_a_wrong_name_is_caught(bundle, tmp_path) -> None:
    card = (bundle / "README.md").read_text("utf-8")
    (bundle / "README.md").write_text(card.replace('"encode_text"', '"encode_txt"'), encoding="utf-8")
    try:
        with pytest.raises(AssertionError, match="encode_txt"):
            check_snippet_names(bundle)
    finally:
        (bundle / "README.md").write_text(card, encoding="utf-8")

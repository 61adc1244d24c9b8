"""Tokenizer files apps load (vocab.json, merges.txt, Hugging Face tokenizer.json + configs): loaded by the
`tokenizers` and `transformers` libraries (not ours), they give the reference ids, zeros to 77 included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobileclip_export.export.pipeline.api import export_model
from mobileclip_export.models import app_tokenizer as at
from mobileclip_export.models.tokenizer import get_tokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

CASES = at.golden_cases()
TEXTS = [c["text"] for c in CASES]


def _mismatches(encode) -> list[str]:
    return [c["text"] for c in CASES if list(encode(c["text"])) != c["ids"]]


@pytest.fixture(scope="module", params=["mobileclip_s0", "mobileclip2_s0"])
def text_dir(request, tmp_path_factory) -> Path:
    """A real (reduced) text-only bundle: the files are the ones the export writes."""
    out = tmp_path_factory.mktemp(request.param)
    res = export_model(request.param, "onnx", encoders="text", output_dir=out, reduced=True)
    assert res.ok
    return res.bundle_dir / "onnx"


def test_bundle_ships_app_files(text_dir: Path) -> None:
    names = {p.name for p in text_dir.iterdir()}
    assert set(at.APP_TOKENIZER_FILES) | {"mobileclip_tokenizer.json"} <= names
    assert json.loads((text_dir / "mobileclip_tokenizer.json").read_text())["type"] == "clip-bpe"
    vocab = json.loads((text_dir / "vocab.json").read_text("utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and sorted(vocab.values()) == list(range(49408))
    lines = (text_dir / "merges.txt").read_text("utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + 48894


def test_tokenizers_from_file_gives_reference_ids(text_dir: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    assert _mismatches(lambda t: tok.encode(t).ids) == []
    batch = tok.encode_batch(TEXTS)  # padding/truncation come from the file itself
    assert all(len(e.ids) == 77 for e in batch)


def test_transformers_clip_tokenizer(text_dir: Path) -> None:
    slow = transformers.CLIPTokenizer(
        str(text_dir / "vocab.json"), str(text_dir / "merges.txt"), pad_token="!", split_special_tokens=True
    )
    loaded = transformers.AutoTokenizer.from_pretrained(str(text_dir))
    assert type(loaded).__name__.startswith("CLIPTokenizer") and loaded.pad_token_id == 0
    # transformers' CLIP class hard-codes a normalizer without ftfy: the cases it cleans differently are
    # exactly the ones we predict (and list in the model card).
    expected = [d["text"] for d in at.cleaning_differences(get_tokenizer(), TEXTS, stock=True)]
    assert 0 < len(expected) <= 3
    for tk in (slow, loaded):
        got = _mismatches(lambda t: tk(t, padding="max_length", max_length=77, truncation=True)["input_ids"])
        assert got == expected


def test_fast_file_emulates_ftfy_where_stock_cannot() -> None:
    tok = get_tokenizer()
    assert at.cleaning_differences(tok, TEXTS) == []
    extra = [chr(c) for c in (*at.LIGATURE_CODEPOINTS, *range(0xFF01, 0xFF5F))]
    extra += ["x\u3000y", "a &amp;amp; b", "&quot;q&quot; &#39;s&#39; &apos;t&apos; e&nbsp;f &lt;b&gt;"]
    assert at.cleaning_differences(tok, extra) == []
    stock = {d["text"] for d in at.cleaning_differences(tok, TEXTS, stock=True)}
    assert "ﬁligature ﬂ" in stock and "Ｆｕｌｌｗｉｄｔｈ" in stock
    long = at.build_fast_tokenizer(tok).encode("word " * 200).ids
    assert len(long) == 77 and long[-1] == 49407 and long[0] == 49406


def test_files_are_deterministic() -> None:
    tok = get_tokenizer()
    assert at.app_tokenizer_files(tok) == at.app_tokenizer_files(tok)

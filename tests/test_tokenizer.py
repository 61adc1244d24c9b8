"""CLIP tokenizer: golden ids from the reference SimpleTokenizer, padding/truncation, files and config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mobileclip_export.errors import UsageError
from mobileclip_export.models import tokenizer as tk

GOLDEN = json.loads((tk.DATA_DIR / "clip-tokenizer-golden.json").read_text("utf-8"))


def test_golden_header_matches_our_constants() -> None:
    assert (GOLDEN["context_length"], GOLDEN["sot"], GOLDEN["eot"], GOLDEN["pad"]) == (77, 49406, 49407, 0)
    assert len(GOLDEN["cases"]) == 30


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[repr(c["text"])[:30] for c in GOLDEN["cases"]])
def test_golden_case(case: dict) -> None:
    got = tk.tokenize(case["text"])
    assert got.dtype == np.int32 and got.shape == (1, 77)
    assert got[0].tolist() == case["ids"]


def test_batch_equals_rows() -> None:
    texts = [c["text"] for c in GOLDEN["cases"]]
    batch = tk.tokenize(texts)
    assert batch.shape == (30, 77) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, np.array([c["ids"] for c in GOLDEN["cases"]], dtype=np.int32))


def test_vocabulary_layout() -> None:
    t = tk.get_tokenizer()
    assert t.vocab_size == 49408
    assert t.encoder["<start_of_text>"] == 49406 and t.encoder["<end_of_text>"] == 49407
    assert t.encoder["!"] == 0 and t.encoder["!</w>"] == 256  # byte chars, then their end-of-word forms
    # Every byte round-trips through the printable byte alphabet.
    assert sorted(tk.bytes_to_unicode()) == list(range(256))
    assert len(set(tk.bytes_to_unicode().values())) == 256


def test_truncation_keeps_eot_last_and_zero_padding() -> None:
    long = tk.tokenize("word " * 200)[0]
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] != 0).all()
    assert (long[1:-1] != 49407).all()
    short = tk.tokenize("a photo of a cat")[0]
    eot = int(np.argmax(short))  # EOT is the highest id: the text encoder pools there
    assert short[eot] == 49407 and eot == 6 and (short[eot + 1 :] == 0).all()
    ctx = tk.tokenize(["a photo of a cat"], context_length=4)
    assert ctx.tolist() == [[49406, 320, 1125, 49407]]


def test_encode_decode_roundtrip() -> None:
    t = tk.get_tokenizer()
    for text in ["a photo of a cat", "café naïve résumé", "東京の夜景", "emoji 🐱🐶🚀 test"]:
        assert t.decode(t.encode(text)) == text.lower()
    assert t.decode(tk.tokenize("A Dog")[0]) == "a dog"  # SOT/EOT/padding dropped


def test_bad_inputs() -> None:
    with pytest.raises(UsageError, match="context_length"):
        tk.tokenize("x", context_length=1)
    with pytest.raises(UsageError, match="item 1 is int"):
        tk.tokenize(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="outside the CLIP vocabulary"):
        tk.get_tokenizer().decode([49408])
    with pytest.raises(UsageError, match="not found"):
        tk.ClipTokenizer("/nonexistent/vocab.txt.gz")


def test_files_and_config() -> None:
    files = tk.tokenizer_files()
    assert [f.name for f in files] == ["bpe_simple_vocab_16e6.txt.gz", "LICENSE-clip-bpe.txt"]
    assert all(f.is_file() for f in files)
    assert "MIT License" in files[1].read_text("utf-8")
    cfg = tk.tokenizer_config()
    assert cfg["context_length"] == 77 and (cfg["sot_id"], cfg["eot_id"], cfg["pad_id"]) == (49406, 49407, 0)
    assert cfg["lowercase"] is True and cfg["vocab_file"] == files[0].name
    assert cfg["vocab_sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    json.dumps(cfg)  # must be manifest-serializable


def test_package_data_declared() -> None:
    # The vocabulary only ships if pyproject's package-data glob covers models/data/*.
    import tomllib

    root = Path(__file__).resolve().parents[1]
    pd = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/*" in pd["mobileclip_export.models"]

"""Tokenizer files apps load, generated from the vocabulary we ship (never downloaded).

- ``vocab.json`` + ``merges.txt``: the CLIP format read by Hugging Face's slow ``CLIPTokenizer``,
  swift-transformers and Apple's MobileCLIP demo app (there named ``clip-vocab.json``/``clip-merges.txt``).
- ``tokenizer.json``: a Hugging Face fast tokenizer built with the ``tokenizers`` library, with zero padding
  to 77 (pad token ``!``, id 0) and truncation that keeps EOT, so ``Tokenizer.from_file`` alone gives the ids
  the text encoders expect. Its normalizer emulates the parts of our ftfy/html cleaning that a fast
  tokenizer can express; ``cleaning_differences`` finds texts where the rest still matters.
- ``tokenizer_config.json`` + ``special_tokens_map.json``: what ``transformers`` reads next to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mobileclip_export.models.tokenizer import (
    CONTEXT_LENGTH,
    DATA_DIR,
    EOT_ID,
    PAD_ID,
    SOT_ID,
    ClipTokenizer,
)

# 30 texts with the ids the reference open_clip SimpleTokenizer gives them (zero padded to 77).
GOLDEN_FILE = DATA_DIR / "clip-tokenizer-golden.json"

# Hugging Face / OpenAI spellings of the specials (open_clip's are <start_of_text>/<end_of_text>; same ids).
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "!"  # id 0: the MobileCLIP text encoders expect zeros after EOT, not EOS
SPLIT_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
APP_TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# ftfy steps a fast normalizer can replay exactly: Latin ligatures and full-width ASCII (+ ideographic space).
LIGATURE_CODEPOINTS = (
    0x132,
    0x133,
    0x149,
    *range(0x1C4, 0x1CD),
    *range(0x1F1, 0x1F4),
    *range(0xFB00, 0xFB07),
)
# html.unescape of the entities people actually type; "&amp;" twice because we unescape twice.
_ENTITIES = (
    ("&amp;", "&"),
    ("&amp;", "&"),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&#39;", "'"),
    ("&apos;", "'"),
    ("&nbsp;", " "),
)


def golden_cases() -> list[dict[str, Any]]:
    """The reference tokenizer's golden set: ``[{"text": str, "ids": [77 ints]}, ...]``."""
    return list(json.loads(GOLDEN_FILE.read_text("utf-8"))["cases"])


def vocab(tok: ClipTokenizer) -> dict[str, int]:
    """token -> id with the OpenAI/Hugging Face names of the two specials."""
    rename = {tok.decoder[SOT_ID]: BOS, tok.decoder[EOT_ID]: EOS}
    return {rename.get(t, t): i for t, i in sorted(tok.encoder.items(), key=lambda kv: kv[1])}


def merges(tok: ClipTokenizer) -> list[tuple[str, str]]:
    return sorted(tok.bpe_ranks, key=tok.bpe_ranks.__getitem__)


def merges_txt(tok: ClipTokenizer) -> str:
    return "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges(tok))


def _ligatures() -> dict[str, str]:
    """What ftfy (our cleaning) turns each ligature into, asked from ftfy itself."""
    import ftfy

    return {chr(c): ftfy.fix_text(chr(c)) for c in LIGATURE_CODEPOINTS}


def _normalizer(stock: bool = False) -> Any:
    """NFC, our ftfy/html emulation (unless ``stock``: transformers' CLIP normalizer), whitespace, lower."""
    from tokenizers import Regex, normalizers

    if stock:
        return normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
    steps = [normalizers.NFC()]
    steps += [normalizers.Replace(a, b) for a, b in _ligatures().items()]
    steps += [normalizers.Replace(chr(c), chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)]
    steps += [normalizers.Replace("\u3000", " ")]
    steps += [normalizers.Replace(a, b) for a, b in _ENTITIES]
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    return normalizers.Sequence(steps)


def build_fast_tokenizer(
    tok: ClipTokenizer, context_length: int = CONTEXT_LENGTH, stock_normalizer: bool = False
) -> Any:
    """A ``tokenizers.Tokenizer`` giving our ids: SOT, BPE, EOT, zeros to ``context_length``.

    ``stock_normalizer`` swaps in the normalizer ``transformers.CLIPTokenizer`` hard-codes (it ignores the
    one in tokenizer.json), to predict where that class differs from us.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE(vocab(tok), merges(tok), unk_token=EOS, end_of_word_suffix="</w>", fuse_unk=False)
    out = Tokenizer(bpe)
    out.normalizer = _normalizer(stock_normalizer)
    out.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS)])
    out.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, SOT_ID), (EOS, EOT_ID)],
    )
    out.enable_truncation(max_length=context_length)
    out.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=PAD)
    return out


def tokenizer_config(context_length: int = CONTEXT_LENGTH) -> dict[str, Any]:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": PAD,
        "model_max_length": context_length,
        "padding_side": "right",
        "truncation_side": "right",
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        # "!" (the pad token, id 0) and the specials inside a text are plain text to us, as in the reference.
        "split_special_tokens": True,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "special": True,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
            }
            for i, t in ((SOT_ID, BOS), (EOT_ID, EOS))
        },
    }


def special_tokens_map() -> dict[str, str]:
    return {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}


def app_tokenizer_files(tok: ClipTokenizer, context_length: int = CONTEXT_LENGTH) -> dict[str, bytes]:
    """The five files (name -> bytes) apps load; deterministic for a given vocabulary."""

    def dump(obj: Any) -> bytes:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    fast = build_fast_tokenizer(tok, context_length)
    return {
        "vocab.json": dump(vocab(tok)),
        "merges.txt": merges_txt(tok).encode("utf-8"),
        "tokenizer.json": fast.to_str(pretty=True).encode("utf-8") + b"\n",
        "tokenizer_config.json": dump(tokenizer_config(context_length)),
        "special_tokens_map.json": dump(special_tokens_map()),
    }


def cleaning_differences(
    tok: ClipTokenizer, texts: Iterable[str], context_length: int = CONTEXT_LENGTH, stock: bool = False
) -> list[dict[str, Any]]:
    """Texts a fast tokenizer (no ftfy) encodes differently from ours, with both id lists.

    ``stock=False``: our tokenizer.json; ``stock=True``: ``transformers.CLIPTokenizer`` built from our files.
    """
    fast = build_fast_tokenizer(tok, context_length, stock_normalizer=stock)
    out = []
    for text in texts:
        ours = tok([text], context_length)[0].tolist()
        theirs = fast.encode(text).ids
        if ours != theirs:
            out.append({"text": text, "ours": ours, "fast": theirs})
    return out

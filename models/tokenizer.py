"""CLIP byte-pair-encoding tokenizer, matching the reference ``SimpleTokenizer`` id for id.

MobileCLIP's S0/S1/S2 and most v2 text encoders attend over all 77 positions with no padding mask, so the
pad id changes the embedding: we zero-pad exactly like the reference (``[SOT, tokens..., EOT, 0...]``) and,
when a text is too long, cut it to ``context_length`` and force EOT into the last slot. The vocabulary ships
as package data next to its license notice; nothing is fetched.
"""

from __future__ import annotations

import functools
import gzip
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex  # \p{L}/\p{N} and Unicode \s; the stdlib `re` lacks the classes

from mobileclip_export.errors import UsageError
from mobileclip_export.hashing import file_sha256

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
VOCAB_FILE = DATA_DIR / "bpe_simple_vocab_16e6.txt.gz"
LICENSE_FILE = DATA_DIR / "LICENSE-clip-bpe.txt"

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
# 49408 = 256 bytes + 256 end-of-word bytes + merges + 2 specials.
_N_MERGES = VOCAB_SIZE - 256 - 256 - 2

# Contractions, runs of letters, single digits, runs of anything else that is not space (CLIP's pattern).
_TOKEN_PATTERN = r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, so BPE never sees whitespace/control bytes.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points 256, 257, ...
    in byte order. The dict's ORDER matters too: the first 256 vocabulary ids follow it (the kept bytes
    first, then the remapped ones), exactly as the CLIP vocabulary was built.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    import ftfy  # core dependency; imported lazily to keep package import cheap

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    # `regex`'s \s is Unicode White_Space, which differs from str.split() on e.g. U+001C..U+001F.
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


class ClipTokenizer:
    """CLIP BPE tokenizer (49408 ids; SOT 49406, EOT 49407, pad 0)."""

    def __init__(self, vocab_path: str | Path = VOCAB_FILE) -> None:
        self.vocab_path = Path(vocab_path)
        if not self.vocab_path.is_file():
            raise UsageError(f"tokenizer vocabulary not found: {self.vocab_path}")
        with gzip.open(self.vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Line 0 is a version header; the first _N_MERGES merges after it define the vocabulary.
        merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise UsageError(f"{self.vocab_path} is not a CLIP BPE merges file (expected {_N_MERGES} merges)")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        byte_chars = list(self.byte_encoder.values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, str] = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        self._pattern = regex.compile(_TOKEN_PATTERN, regex.IGNORECASE)
        assert self.encoder[SOT_TOKEN] == SOT_ID and self.encoder[EOT_TOKEN] == EOT_ID  # internal invariant
        self.sot_id, self.eot_id, self.pad_id = SOT_ID, EOT_ID, PAD_ID
        self.vocab_size = len(self.encoder)

    def _bpe(self, token: str) -> str:
        """Merge the characters of one pre-token by merge rank; returns space-joined sub-tokens."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: list[str] = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without SOT/EOT or padding."""
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped).split(" "))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
        """Text of ``ids``; pad (0 after EOT), SOT and EOT are dropped when ``skip_special``."""
        toks: list[str] = []
        for i in (int(x) for x in ids):
            if skip_special and i in (SOT_ID, EOT_ID):
                if i == EOT_ID:
                    break  # everything after EOT is padding
                continue
            if i not in self.decoder:
                raise UsageError(f"token id {i} is outside the CLIP vocabulary [0, {self.vocab_size})")
            toks.append(self.decoder[i])
        raw = bytearray(self.byte_decoder[c] for c in "".join(toks))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise UsageError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        out = np.full((len(texts), context_length), PAD_ID, dtype=np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                kind = type(text).__name__
                raise UsageError(f"tokenize expects str or a sequence of str; item {row} is {kind}")
            ids = [SOT_ID, *self.encode(text), EOT_ID]
            if len(ids) > context_length:
                log.debug("text %d truncated from %d to %d tokens", row, len(ids), context_length)
                ids = ids[:context_length]
                ids[-1] = EOT_ID
            out[row, : len(ids)] = ids
        return out


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    """The shared tokenizer over the packaged vocabulary (built once; ~0.3 s)."""
    return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Token ids ``int32 [B, context_length]``: SOT, BPE ids, EOT, then zeros; EOT kept when truncated."""
    return get_tokenizer()(texts, context_length)


def tokenizer_files() -> list[Path]:
    """Files to ship next to a text artifact: the vocabulary and its license notice."""
    return [VOCAB_FILE, LICENSE_FILE]


@functools.lru_cache(maxsize=1)
def _vocab_sha256() -> str:
    return file_sha256(VOCAB_FILE)


def tokenizer_config() -> dict:
    """Settings a runtime needs to reproduce our token ids (recorded in export manifests)."""
    return {
        "type": "clip-bpe",
        "vocab_size": VOCAB_SIZE,
        "context_length": CONTEXT_LENGTH,
        "sot_id": SOT_ID,
        "eot_id": EOT_ID,
        "pad_id": PAD_ID,
        "padding": "zeros after EOT",
        "truncation": "cut to context_length, EOT forced into the last slot",
        "lowercase": True,
        "cleaning": ["ftfy.fix_text", "html.unescape x2", "collapse whitespace", "strip", "lowercase"],
        "pattern": _TOKEN_PATTERN,
        "vocab_file": VOCAB_FILE.name,
        "vocab_sha256": _vocab_sha256(),
        "license_file": LICENSE_FILE.name,
        "dtype": "int32",
    }

"""Streaming, batched image embedding: at most one batch of decoded pixels is alive at a time, so memory stays
flat however many images pass through (``predict`` here, and the library's ``index``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")
Failure = tuple[T, str]
DEFAULT_BATCH = 16


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_stream(
    encode_image: Callable[[np.ndarray], np.ndarray],
    items: Iterable[T],
    load: Callable[[T], np.ndarray],
    batch_size: int = DEFAULT_BATCH,
    strict: bool = False,
) -> Iterator[tuple[list[T], np.ndarray, list[Failure]]]:
    """Per batch: (items that loaded, their float32 embeddings [n, D], (item, error) of those that did not).

    ``load(item)`` returns float32 [3, H, W] pixels or raises; with ``strict`` the first error propagates.
    """
    for batch in batched(items, batch_size):
        ok: list[T] = []
        pixels: list[np.ndarray] = []
        failed: list[Failure] = []
        for item in batch:
            try:
                pixels.append(load(item))
            except Exception as err:  # a bad file is listed, never fatal (unless strict)
                if strict:
                    raise
                failed.append((item, _one_line(err)))
            else:
                ok.append(item)
        emb = (
            np.asarray(encode_image(np.stack(pixels)), np.float32) if pixels else np.zeros((0, 0), np.float32)
        )
        del pixels
        yield ok, emb, failed


def _one_line(err: BaseException) -> str:
    """The error's first line, object addresses removed (a re-run must log the same bytes)."""
    text = str(err).strip().splitlines()
    first = re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", text[0] if text else "")
    return f"{type(err).__name__}: {first}".strip()

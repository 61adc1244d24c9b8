"""Streaming, batched image embedding: at most one batch of pixels is alive at a time, so memory stays flat
however many images pass through (``index`` and ``predict`` both use it)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

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


def normalized_fp16(emb: np.ndarray) -> np.ndarray:
    """L2-normalize in float64, then round to float16 (the library's storage)."""
    x = np.asarray(emb, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float16)


class ProgressBar:
    """One stderr line, redrawn at most 5 times a second: done/total, images/s, ETA (a plain line every
    10 s when stderr is not a terminal)."""

    def __init__(self, total: int, label: str = "index", stream: TextIO | None = None, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = self.last = time.perf_counter()
        self.done = 0

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done / dt if dt > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = "--:--" if eta != eta else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        width = 24
        fill = int(width * pct / 100)
        bar = "#" * fill + "." * (width - fill)
        return f"{self.label} [{bar}] {self.done}/{self.total} {pct:5.1f}%  {rate:7.1f} images/s  ETA {eta_s}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        self._draw()

    def _draw(self) -> None:
        self.stream.write(("\r" + self.line()) if self.tty else self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            self._draw()
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()

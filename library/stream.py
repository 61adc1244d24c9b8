"""The library's side of streaming: fp16 storage rounding and the progress bar (the batched embedding loop
itself is ``export/zeroshot/stream.py``, shared with ``predict``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import numpy as np

from mobileclip_export.export.zeroshot.stream import DEFAULT_BATCH, batched, embed_stream

__all__ = ["DEFAULT_BATCH", "ProgressBar", "batched", "embed_stream", "normalized_fp16"]


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

"""Progress events from the pipeline, and the stderr display the CLI uses.

The pipeline never prints: it calls ``progress(event)`` (any callable) and logs. The CLI passes a
``StderrProgress``; the Python API default is no display.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """``kind``: "stage-start" | "stage-end" | "warning" | "info". ``stage``: e.g. "build model", "export",
    "verify". ``target``/``encoder`` are set for per-artifact stages."""

    kind: str
    stage: str
    target: str | None = None
    encoder: str | None = None
    seconds: float | None = None
    bytes: int | None = None
    status: str | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class StderrProgress:
    """Per-stage lines with elapsed time and artifact size; warnings stand out."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def _label(self, ev: ProgressEvent) -> str:
        parts = [p for p in (ev.target, ev.encoder) if p]
        return f"{ev.stage} [{' '.join(parts)}]" if parts else ev.stage

    def __call__(self, ev: ProgressEvent) -> None:
        clock = f"[{time.perf_counter() - self.t0:7.1f}s]"
        if ev.kind == "stage-start":
            line = f"{clock} {self._label(ev)} ..."
        elif ev.kind == "stage-end":
            bits = [f"{ev.seconds:.1f}s" if ev.seconds is not None else ""]
            if ev.bytes is not None:
                bits.append(human_bytes(ev.bytes))
            if ev.status:
                bits.append(ev.status)
            if ev.message:
                bits.append(ev.message)
            line = f"{clock} {self._label(ev)} done: {', '.join(b for b in bits if b)}"
        elif ev.kind == "warning":
            bar = "!" * 78
            line = f"{bar}\n!! WARNING: {ev.message}\n{bar}"
        else:
            line = f"{clock} {ev.message}"
        print(line, file=self.stream, flush=True)

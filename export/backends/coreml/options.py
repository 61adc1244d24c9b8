"""Core ML option values and parsers (cheap: imported when the registry lists targets)."""

from __future__ import annotations

from collections.abc import Sequence

from mobileclip_export.errors import UsageError
from mobileclip_export.export.compression.precisions import INT8, PALETTIZE_BITS

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "iOS26", "macOS13", "macOS14", "macOS15", "macOS26")
COMPRESSIONS = (INT8, *PALETTIZE_BITS)  # weight compressions of an fp16 program (compress.py)
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}


def parse_batch_sizes(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,4,8"`` (or a sequence of ints) -> sorted unique positive batch sizes."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        sizes = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        raise UsageError(f"--batch-sizes wants comma-separated positive integers, got {value!r}") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-sizes wants comma-separated positive integers, got {value!r}")
    return tuple(sizes)

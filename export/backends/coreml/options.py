"""Core ML option values and parsers (cheap: imported when the registry lists targets)."""

from __future__ import annotations

from collections.abc import Sequence

from mobileclip_export.errors import UsageError
from mobileclip_export.export.compression.precisions import (
    INT8,
    INT8_STATIC,
    PALETTIZE4_STATIC,
    PALETTIZE_BITS,
)

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "iOS26", "macOS13", "macOS14", "macOS15", "macOS26")
COMPRESSIONS = (INT8, *PALETTIZE_BITS, INT8_STATIC, PALETTIZE4_STATIC)  # of an fp16 program (compress.py)
# Activations quantized to int8 too (W8A8, A8W4): int8 x int8 compute on the Neural Engine of A17 Pro / M4
# and later; the joint A8W4 form (int8 lookup tables) needs the iOS18 ops.
STATIC = {INT8_STATIC: "W8A8", PALETTIZE4_STATIC: "A8W4"}
IOS18_OR_LATER = ("iOS18", "iOS26", "macOS15", "macOS26")
CALIBRATION_OPTION = "calibration_images"
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

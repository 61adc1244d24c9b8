"""Compression precisions shared by the backends: their names, what they mean, and layer naming.

A precision name means the same thing on every target that offers it:

- ``int8``: 8-bit weights, per output channel, activations in float (dynamic quantization where the runtime
  quantizes activations on the fly).
- ``int8-static``: 8-bit weights and activations, activation ranges calibrated on the shipped photographs /
  captions (``export.calibration``); a backend may keep numerically fragile ops in float (TFLite: the
  LayerNorm ops), and its manifest details say which.
- ``palettize8`` / ``palettize6`` / ``palettize4`` / ``palettize2``: weights as indices into a k-means
  lookup table of 2^n values (per grouped channels where the format allows); ``palettize2`` exists to show
  what over-compression does and is expected to need kept layers.
- ``palettize4-static``: ``palettize4`` weights with int8 lookup tables and int8 activations calibrated like
  ``int8-static`` (Core ML's joint A8W4; ``int8-static`` there is W8A8).

Layers are named like the encoder's parameters without ``.weight`` (``model.network.2.0.convffn.fc1``,
``embedding_layer``, ``projection_layer``), the names ``--keep-fp`` takes and the guard reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mobileclip_export.errors import UsageError

INT8 = "int8"
INT8_STATIC = "int8-static"
PALETTIZE_BITS = {"palettize8": 8, "palettize6": 6, "palettize4": 4, "palettize2": 2}
PALETTIZE4_STATIC = "palettize4-static"
COMPRESSED = (INT8, INT8_STATIC, *PALETTIZE_BITS, PALETTIZE4_STATIC)
KEEP_FP_OPTION = "keep_fp"
AUTO_KEEP_OPTION = "auto_keep_fp"
AUTO_KEEP_HELP = (
    "when a compressed artifact fails its accuracy guard, keep its most sensitive layers uncompressed "
    "(1, 2, 4, ...) until it passes; the manifest lists them"
)
KEEP_FP_HELP = (
    "comma-separated layers (encoder parameter names without .weight) kept uncompressed in a compressed "
    "precision; the accuracy guard's report names candidates"
)


def is_compressed(precision: str) -> bool:
    return precision in COMPRESSED


def parse_layers(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a.b,c"`` (or an iterable) -> sorted unique layer names; empty for None."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = sorted({str(v).strip().removesuffix(".weight") for v in items if str(v).strip()})
    bad = [n for n in names if any(c.isspace() for c in n)]
    if bad:
        raise UsageError(f"--keep-fp wants comma-separated layer names, got {bad}")
    return tuple(names)


def flat_name(layer: str) -> str:
    """A layer name as converters flatten it into graph names: dots to underscores, no leading ``model.``
    (the image encoder's network is converted without its normalization wrapper)."""
    return layer.removeprefix("model.").replace(".", "_")


def matches_layer(graph_name: str, layers: Iterable[str]) -> str | None:
    """The layer in ``layers`` that a converter's weight name (``p_network_2_0_fc1_weight``,
    ``model.network.2.0.fc1.weight``; backend-specific suffixes stripped by the caller) refers to."""
    g = graph_name.replace(".", "_").replace("/", "_")
    for layer in layers:
        if re.fullmatch(rf"(?:.*_)?{re.escape(flat_name(layer))}(?:_weight)?", g):
            return layer
    return None

"""Core ML weight compression of a saved fp16 ``.mlpackage`` through ``coremltools.optimize.coreml``.

- ``int8``: per-output-channel symmetric linear quantization (iOS16/17: ``constexpr_affine_dequantize``;
  iOS18+: ``constexpr_blockwise_shift_scale``).
- ``palettizeN``: k-means lookup tables of 2^N entries, one per group of 16 output channels where the
  deployment target has the iOS18 ops (``per_grouped_channel``), one per tensor below it.

Weights smaller than coremltools' default threshold (2048 values: LayerNorm, biases, tiny heads) stay fp16.
Layers in ``keep`` (``export.compression`` naming) are left uncompressed via per-const configs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure, UsageError
from mobileclip_export.export.compression.precisions import (
    INT8,
    KEEP_FP_OPTION,
    PALETTIZE_BITS,
    matches_layer,
    parse_layers,
)

from .options import COMPRESSIONS as PRECISIONS

log = logging.getLogger(__name__)

_GROUPED_TARGETS = ("iOS18", "iOS26", "macOS15", "macOS26")  # per-grouped-channel LUTs need the iOS18 ops
_GROUP_SIZE = 16
_WEIGHT_THRESHOLD = 2048


def _op_config(cto: Any, precision: str, deployment_target: str) -> tuple[Any, dict[str, Any]]:
    if precision == INT8:
        desc = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
        return cto.OpLinearQuantizerConfig(**desc, weight_threshold=_WEIGHT_THRESHOLD), desc
    if precision not in PALETTIZE_BITS:
        raise UsageError(
            f"no Core ML compression for precision {precision!r} (choices: {', '.join(PRECISIONS)})"
        )
    desc: dict[str, Any] = {"mode": "kmeans", "nbits": PALETTIZE_BITS[precision]}
    if deployment_target in _GROUPED_TARGETS:
        desc.update(granularity="per_grouped_channel", group_size=_GROUP_SIZE)
    else:
        desc.update(granularity="per_tensor")
    return cto.OpPalettizerConfig(**desc, weight_threshold=_WEIGHT_THRESHOLD), desc


def _kept_consts(
    weights: Mapping[str, Any], keep: tuple[str, ...], params: Mapping[str, np.ndarray]
) -> dict[str, str]:
    """const name -> kept layer: by name where the converter kept the parameter's name, else by value
    (a folded transpose or reshape renames it: ``transpose_1_1``, ``view``)."""
    kept: dict[str, str] = {}
    for name in weights:
        layer = matches_layer(name.removesuffix("_to_fp16"), keep)
        if layer is not None:
            kept[name] = layer
    for layer in sorted(set(keep) - set(kept.values())):
        p = params.get(layer)
        if p is None:
            continue
        for name, meta in weights.items():
            v = np.asarray(meta.val, np.float32)
            if name not in kept and v.size == p.size and _same_values(v, p):
                kept[name] = layer
    return kept


def _same_values(v: np.ndarray, p: np.ndarray) -> bool:
    p16 = p.astype(np.float16).astype(np.float32)
    cands = [p16.reshape(-1)] + ([p16.T.reshape(-1)] if p16.ndim == 2 else [])
    return any(
        np.array_equal(v.reshape(-1), c) or np.allclose(v.reshape(-1), c, rtol=1e-3, atol=1e-6) for c in cands
    )


def compress_package(
    path: Path,
    precision: str,
    deployment_target: str,
    keep: tuple[str, ...] = (),
    params: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Compress the package at ``path`` in place; returns the manifest details of what was done.
    ``params`` (layer -> fp32 weight) lets kept layers be found when the converter renamed their const."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    op_cfg, desc = _op_config(cto, precision, deployment_target)
    weights = cto.get_weights_metadata(model, weight_threshold=_WEIGHT_THRESHOLD)
    kept = _kept_consts(weights, keep, params or {})
    unmatched = sorted(set(keep) - set(kept.values()))
    if unmatched:
        log.warning("--keep-fp: no compressible Core ML weight for %s", ", ".join(unmatched))
    config = cto.OptimizationConfig(global_config=op_cfg, op_name_configs=dict.fromkeys(kept))
    fn = cto.linear_quantize_weights if precision == INT8 else cto.palettize_weights
    try:
        compressed = fn(model, config)
    except Exception as err:  # coremltools raises bare ValueError/AssertionError from its passes
        raise ExportFailure(f"coremltools could not compress to {precision}: {err}") from err
    meta = compressed.user_defined_metadata
    meta["coreml.precision"] = precision
    meta["coreml.compression"] = ", ".join(f"{k}={v}" for k, v in desc.items())
    if kept:
        meta["coreml.kept_fp16_layers"] = ",".join(sorted(set(kept.values())))
    import shutil

    shutil.rmtree(path)
    compressed.save(str(path))
    return {
        "compression": {
            **desc,
            "weight_threshold": _WEIGHT_THRESHOLD,
            "library": "coremltools.optimize.coreml",
        },
        "compressed_weights": len(weights) - len(kept),
        "kept_fp_layers": sorted(set(kept.values())),
        "kept_fp_weights": sorted(kept),
    }


def compress_export(enc: Any, precision: str, opts: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Compress the just-written fp16 package of encoder ``enc`` (an ``EncoderExport``) as ``opts`` say."""
    keep = parse_layers(opts.get(KEEP_FP_OPTION))
    params = {n.removesuffix(".weight"): p for n, p in enc.module.named_parameters()}
    kept = {k: params[k].detach().float().numpy() for k in keep if k in params}
    return compress_package(path, precision, opts["minimum_deployment_target"], keep, kept)

"""Core ML weight compression of a saved fp16 ``.mlpackage`` through ``coremltools.optimize.coreml``.

- ``int8``: per-output-channel symmetric linear quantization (iOS16/17: ``constexpr_affine_dequantize``;
  iOS18+: ``constexpr_blockwise_shift_scale``).
- ``palettizeN``: k-means lookup tables of 2^N entries, one per group of 16 output channels where the
  deployment target has the iOS18 ops (``per_grouped_channel``), one per tensor below it.

- ``int8-static`` (W8A8) / ``palettize4-static`` (A8W4): activations first get int8 quantize/dequantize
  pairs, ranges (least round-trip error) calibrated on the shipped photographs / captions (activations.py),
  then the weights are compressed as ``int8`` / as ``palettize4`` per grouped channel with each lookup table
  quantized to int8 (per tensor, the form coremltools' joint compression allows), so the Neural Engine can
  run int8 x int8.

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
    INT8_STATIC,
    KEEP_FP_OPTION,
    PALETTIZE4_STATIC,
    PALETTIZE_BITS,
    matches_layer,
    parse_layers,
)

from .options import CALIBRATION_OPTION, STATIC
from .options import COMPRESSIONS as PRECISIONS

log = logging.getLogger(__name__)

_GROUPED_TARGETS = ("iOS18", "iOS26", "macOS15", "macOS26")  # per-grouped-channel LUTs need the iOS18 ops
_GROUP_SIZE = 16
_WEIGHT_THRESHOLD = 2048


_WEIGHTS_OF = {INT8_STATIC: INT8, PALETTIZE4_STATIC: "palettize4"}
_INTENDED_UNITS = (
    "cpu_and_ne: int8 x int8 convolutions and linears on the Neural Engine of A17 Pro / M4 and later; other "
    "chips and the GPU/CPU run the quantize/dequantize pairs around fp16 compute (smaller, not faster)"
)


def _op_config(cto: Any, precision: str, deployment_target: str) -> tuple[Any, dict[str, Any]]:
    precision = _WEIGHTS_OF.get(precision, precision)
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


def _compress_weights(
    model: Any,
    precision: str,
    deployment_target: str,
    keep: tuple[str, ...],
    params: Mapping[str, np.ndarray],
) -> tuple[Any, dict[str, Any]]:
    """The weight half of ``precision`` applied to ``model``; returns the model and the manifest details."""
    import coremltools.optimize.coreml as cto

    op_cfg, desc = _op_config(cto, precision, deployment_target)
    weights = cto.get_weights_metadata(model, weight_threshold=_WEIGHT_THRESHOLD)
    kept = _kept_consts(weights, keep, params)
    unmatched = sorted(set(keep) - set(kept.values()))
    if unmatched:
        log.warning("--keep-fp: no compressible Core ML weight for %s", ", ".join(unmatched))
    skip = dict.fromkeys(kept)
    fn = (
        cto.linear_quantize_weights
        if _WEIGHTS_OF.get(precision, precision) == INT8
        else cto.palettize_weights
    )
    try:
        model = fn(model, cto.OptimizationConfig(global_config=op_cfg, op_name_configs=skip))
        if precision == PALETTIZE4_STATIC:  # int8 LUTs: one scale per table set (joint compression's form)
            lut_cfg = cto.OpLinearQuantizerConfig(
                mode="linear_symmetric",
                dtype="int8",
                granularity="per_tensor",
                weight_threshold=_WEIGHT_THRESHOLD,
            )
            config = cto.OptimizationConfig(global_config=lut_cfg, op_name_configs=skip)
            model = cto.linear_quantize_weights(model, config, joint_compression=True)
            desc["lut_dtype"] = "int8"
    except Exception as err:  # coremltools raises bare ValueError/AssertionError from its passes
        raise ExportFailure(f"coremltools could not compress to {precision}: {err}") from err
    return model, {
        "compression": {
            **desc,
            "weight_threshold": _WEIGHT_THRESHOLD,
            "library": "coremltools.optimize.coreml",
        },
        "compressed_weights": len(weights) - len(kept),
        "kept_fp_layers": sorted(set(kept.values())),
        "kept_fp_weights": sorted(kept),
    }


def _quantize_activations(
    path: Path, model: Any, calibration: np.ndarray | None
) -> tuple[Any, dict[str, Any]]:
    from .activations import activation_stats, count_ops, integer_ops, quantize_activations

    if calibration is None or not len(calibration):
        raise ExportFailure("activation quantization needs calibration inputs")
    stats, n = activation_stats(path, calibration)
    try:
        model = quantize_activations(model, stats, integer_ops(path))
    except Exception as err:  # coremltools' passes raise bare errors
        raise ExportFailure(f"coremltools could not quantize the activations: {err}") from err
    return model, {
        "dtype": "int8",
        "mode": "linear_symmetric",
        "granularity": "per_tensor",
        "quantize_ops": count_ops(model, "quantize"),
        "calibration_inputs": n,
        "calibrated_with": "coreml.mil executor (fp16 emulation): per tensor, the symmetric range of least "
        "int8 round-trip squared error over the calibration values",
        "library": "coremltools.optimize.coreml graph passes (insert_prefix/suffix_quantize_dequantize_pair)",
    }


def compress_package(
    path: Path,
    precision: str,
    deployment_target: str,
    keep: tuple[str, ...] = (),
    params: Mapping[str, np.ndarray] | None = None,
    calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compress the package at ``path`` in place; returns the manifest details of what was done.
    ``params`` (layer -> fp32 weight) lets kept layers be found when the converter renamed their const;
    ``calibration`` (samples in the encoder's input form) calibrates the activations of W8A8 / A8W4."""
    import shutil

    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    details: dict[str, Any] = {}
    if precision in STATIC:
        model, details["activation_quantization"] = _quantize_activations(path, model, calibration)
        details["intended_compute_units"] = _INTENDED_UNITS
    model, weight_details = _compress_weights(model, precision, deployment_target, keep, params or {})
    details.update(weight_details)
    meta = model.user_defined_metadata
    meta["coreml.precision"] = precision
    meta["coreml.compression"] = ", ".join(f"{k}={v}" for k, v in details["compression"].items())
    if precision in STATIC:
        meta["coreml.activations"] = f"int8 ({STATIC[precision]}), calibrated"
    if details["kept_fp_layers"]:
        meta["coreml.kept_fp16_layers"] = ",".join(details["kept_fp_layers"])
    shutil.rmtree(path)
    model.save(str(path))
    return details


def _package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compress_export(enc: Any, precision: str, opts: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Compress the just-written fp16 package of encoder ``enc`` (an ``EncoderExport``) as ``opts`` say;
    the details carry bytes per inference parameter (package size / parameters of the exported encoder)."""
    keep = parse_layers(opts.get(KEEP_FP_OPTION))
    params = {n.removesuffix(".weight"): p for n, p in enc.module.named_parameters()}
    kept = {k: params[k].detach().float().numpy() for k in keep if k in params}
    calibration = None
    if precision in STATIC:
        from mobileclip_export.export.compression.calibration import calibration_inputs

        folder = opts.get(CALIBRATION_OPTION) if enc.encoder == "image" else None
        calibration = calibration_inputs(enc, folder=folder)
    details = compress_package(path, precision, opts["minimum_deployment_target"], keep, kept, calibration)
    n_params = sum(int(p.numel()) for p in enc.module.parameters())
    details["inference_parameters"] = n_params
    details["bytes_per_param"] = round(_package_bytes(path) / max(n_params, 1), 4)
    return details

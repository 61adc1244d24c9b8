"""ai-edge-quantizer passes of the TFLite backend: fp16 weights, dynamic-range int8 and full-integer int8.

``int8-static`` is the ``static_wi8_ai8`` recipe (int8 weights per channel, int8 activations with ranges
calibrated on the shipped photographs / captions, ``export.calibration``) with two per-op exceptions set
through the quantizer's own recipe manager (``_static_recipe``):

- the ops of every LayerNorm stay float32 (``NO_QUANTIZE`` on their scope; the quantizer inserts the
  DEQUANTIZE / QUANTIZE around them). LiteRT has no LayerNorm kernel, so a LayerNorm is a dozen ops whose
  per-token statistics (mean, variance, rsqrt) share one per-tensor scale: on reduced S0 text int8 gave
  cosine 0.938, 16-bit activations (``static_wi8_ai16``, or only the LayerNorms at 16 bits) 0.941 and ran
  ~20x slower (no XNNPACK int16 kernels); float LayerNorms give 0.998 at the speed of fp32.
- the token-embedding table (EMBEDDING_LOOKUP, which the static recipe leaves float) is int8 per row
  through the dynamic-range config; the looked-up rows come out float and are quantized after.

The quantizer also makes float inputs and outputs int8 (the image input and the embedding output); the
runner quantizes and dequantizes them with each tensor's own scale and zero point (``to_input`` /
``from_output``). Integer inputs (token ids) are left as they are.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure, MissingDependencyError, install_hint
from mobileclip_export.export.spec import EncoderExport

log = logging.getLogger(__name__)

_QUANTIZED_IO = (np.int8, np.uint8, np.int16)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"tflite quantization needs ai-edge-quantizer ({err}); install it with: {install_hint('tflite')}"
        ) from err


def _calibration(enc: EncoderExport, signature: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """One batch-1 sample per photograph / caption (the artifact has a batch-1 signature)."""
    from mobileclip_export.export.compression.calibration import calibration_inputs

    x = calibration_inputs(enc)
    name = enc.inputs[0].name
    return {signature: [{name: x[i : i + 1]} for i in range(len(x))]}


def _layer_norm_classes(module: Any) -> list[str]:
    """Class names of ``module``'s LayerNorms (subclasses too): litert-torch names each op of a module
    ``...<qualified class name>_<attribute>;<n>``, which is the scope the quantizer's regex sees."""
    from torch import nn

    return sorted({type(m).__name__ for m in module.modules() if isinstance(m, nn.LayerNorm)})


def _static_recipe(enc: EncoderExport) -> tuple[Any, dict[str, Any]]:
    """``static_wi8_ai8`` with the LayerNorm ops in float32 and an int8 embedding table (module docstring)."""
    managers = _require("ai_edge_quantizer.recipe_manager")
    algorithms = _require("ai_edge_quantizer.algorithm_manager")
    ops = _require("ai_edge_quantizer.qtyping").TFLOperationName
    manager = managers.RecipeManager()
    manager.add_static_config(".*", ops.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    classes = _layer_norm_classes(enc.module)
    if classes:  # a later scope takes priority over ".*"
        scope = r"\.(?:" + "|".join(classes) + ")_"
        manager.add_quantization_config(
            scope, ops.ALL_SUPPORTED, algorithm_key=algorithms.AlgorithmName.NO_QUANTIZE
        )
    manager.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, num_bits=8)
    details = {
        "recipe": "static_wi8_ai8; LayerNorm ops float32; EMBEDDING_LOOKUP table int8 (dynamic range)",
        "float32_modules": classes,
    }
    return manager.get_quantization_recipe(), details


def quantize(content: bytes, precision: str, enc: EncoderExport, signature: str) -> tuple[bytes, dict]:
    """The quantized flatbuffer and details for the manifest (``int8-static``: the recipe, the modules kept
    float32 and the calibration size)."""
    aeq = _require("ai_edge_quantizer.quantizer")
    recipe = _require("ai_edge_quantizer.recipe")
    qtyping = _require("ai_edge_quantizer.qtyping")
    details: dict[str, Any] = {}
    try:
        q = aeq.Quantizer(bytearray(content))
        calibration = None
        if precision == "int8":
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        elif precision == "int8-static":
            static_recipe, details = _static_recipe(enc)
            q.load_quantization_recipe(static_recipe)
            data = _calibration(enc, signature)
            calibration = q.calibrate(data, num_threads=1)
            details["calibration_inputs"] = len(data[signature])
        else:
            q.add_weight_only_config(
                regex=".*",
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                num_bits=16,
                algorithm_key=aeq.AlgorithmName.FLOAT_CASTING,
            )
        result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
        return bytes(result.quantized_model), details
    except ExportFailure:
        raise
    except Exception as err:  # noqa: BLE001 - the quantizer's errors, with context
        raise ExportFailure(f"ai-edge-quantizer {precision} quantization failed: {err}") from err


def _scale_zero(detail: Mapping[str, Any]) -> tuple[float, int]:
    scale, zero = detail.get("quantization") or (0.0, 0)
    return float(scale), int(zero)


def is_quantized(detail: Mapping[str, Any]) -> bool:
    """An int8/uint8/int16 tensor with a scale: a float tensor the quantizer made integer."""
    return detail["dtype"] in _QUANTIZED_IO and _scale_zero(detail)[0] != 0.0


def to_input(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """A float feed for a quantized input: round(x / scale + zero point), clipped to the integer range."""
    if not is_quantized(detail) or value.dtype.kind != "f":
        return value
    scale, zero = _scale_zero(detail)
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(value / scale + zero), info.min, info.max).astype(detail["dtype"])


def from_output(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """A quantized output back to float: (q - zero point) * scale."""
    if not is_quantized(detail):
        return np.asarray(value, dtype=np.float32)
    scale, zero = _scale_zero(detail)
    return ((np.asarray(value, dtype=np.float32) - zero) * scale).astype(np.float32)

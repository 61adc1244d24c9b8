"""ai-edge-quantizer passes of the TFLite backend: fp16 weights, dynamic-range int8 and full-integer int8.

``int8-static`` (recipe ``static_wi8_ai8``) quantizes weights and activations to int8 with activation ranges
calibrated on the shipped photographs / captions (``export.calibration``). The quantizer then also makes
float inputs and outputs int8 (the image input and the embedding output); the runner quantizes and
dequantizes them with each tensor's own scale and zero point (``to_input`` / ``from_output``). Integer
inputs (token ids) are left as they are.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure, MissingDependencyError, install_hint
from mobileclip_export.export.target import EncoderExport

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
    from mobileclip_export.export.calibration import calibration_inputs

    x = calibration_inputs(enc)
    name = enc.inputs[0].name
    return {signature: [{name: x[i : i + 1]} for i in range(len(x))]}


def quantize(content: bytes, precision: str, enc: EncoderExport, signature: str) -> tuple[bytes, dict]:
    """The quantized flatbuffer and details for the manifest (calibration size for ``int8-static``)."""
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
            q.load_quantization_recipe(recipe.static_wi8_ai8())
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

"""ONNX int8 through ``onnxruntime.quantization``, applied to the fp32 graph the onnx target wrote.

- ``int8``: dynamic quantization (weights int8 per output channel, activations quantized at run time) of
  MatMul/Gemm and Conv. Weights are unsigned (QUInt8): signed per-channel weights lost accuracy on this
  CPU's kernels (see the compression notes in the docs).
- ``int8-static``: QDQ with activation ranges calibrated on the shipped photographs / captions
  (``export.calibration``), per-channel weights.

The dynamo exporter writes ``value_info`` entries named like initializers, which ``quantize_dynamic`` trips
over; they are dropped first (shapes are re-inferred by onnxruntime). Layers in ``keep`` stay float.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.compression.precisions import INT8, INT8_STATIC, matches_layer

log = logging.getLogger(__name__)

PRECISIONS = (INT8, INT8_STATIC)
_OPS = ["MatMul", "Gemm", "Conv", "Gather"]  # Gather: the token embedding table


def _nodes_to_exclude(model: Any, keep: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Names of nodes whose weight initializer belongs to a kept layer, and the layers found."""
    inits = {i.name for i in model.graph.initializer}
    nodes, found = [], set()
    for node in model.graph.node:
        if node.op_type not in _OPS:  # (Gather: the table is input 0)
            continue
        for name in node.input:
            layer = matches_layer(name, keep) if name in inits else None
            if layer:
                nodes.append(node.name)
                found.add(layer)
    return nodes, sorted(found)


def _activation_matmuls(model: Any) -> list[str]:
    """MatMuls of two activations (attention's q @ k^T and p @ v): no weight to quantize, and their per-tensor
    calibrated ranges are what costs static int8 its accuracy (full-size S0 text: cosine 0.63 with them)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not inits.intersection(n.input)]


def _clean(model: Any) -> Any:
    """Drop value_info named like initializers (``quantize_dynamic`` trips over them) and the exporter's
    per-node provenance (``metadata_props``: module namespace, class hierarchy, stack trace): 542.6 kB of the
    full-size S0 image int8-static file, 0.048 bytes/param, read by nothing at run time."""
    inits = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in inits]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for node in model.graph.node:
        del node.metadata_props[:]
    return model


class _Reader:
    """CalibrationDataReader over one input tensor, one row per call."""

    def __init__(self, name: str, data: np.ndarray):
        self._rows: Iterator[dict[str, np.ndarray]] = iter({name: data[i : i + 1]} for i in range(len(data)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


def quantize_file(
    path: Path, precision: str, keep: tuple[str, ...], calibration: tuple[str, np.ndarray] | None
) -> dict[str, Any]:
    """Quantize the ONNX file at ``path`` in place; returns manifest details."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model = _clean(onnx.load(str(path)))
    exclude, kept = _nodes_to_exclude(model, keep)
    with tempfile.TemporaryDirectory(prefix="mobileclip-onnx-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        common = {"op_types_to_quantize": _OPS, "per_channel": True, "nodes_to_exclude": exclude}
        try:
            if precision == INT8:
                quantize_dynamic(src, dst, weight_type=QuantType.QUInt8, **common)
                desc = {"mode": "dynamic", "weights": "uint8 per channel", "activations": "uint8 at run time"}
            else:
                if calibration is None:
                    raise ExportFailure("onnx int8-static needs calibration inputs")
                reader = _Reader(*calibration)
                common["nodes_to_exclude"] = exclude + _activation_matmuls(model)
                quantize_static(
                    src,
                    dst,
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    **common,
                )
                desc = {
                    "mode": "static QDQ",
                    "weights": "int8 per channel",
                    "activations": "uint8 calibrated",
                    "calibration_inputs": int(len(calibration[1])),
                }
        except ExportFailure:
            raise
        except Exception as err:  # onnxruntime.quantization raises bare exceptions
            raise ExportFailure(f"onnxruntime could not quantize to {precision}: {err}") from err
        Path(path).write_bytes(dst.read_bytes())
    return {
        "compression": {**desc, "ops": _OPS, "library": "onnxruntime.quantization"},
        "kept_fp_layers": kept,
        "kept_fp_nodes": sorted(exclude),
    }

"""Where the bytes of a TFLite flatbuffer go: per constant-tensor role, quantization parameters, the rest.

A constant (a tensor with buffer data) is an int8 weight, an int32 bias, a float constant left unquantized or
another constant (shapes, indices). Every quantized tensor, constant or activation, carries its scales
(float32) and zero points (int64) in the flatbuffer: ``quantization_params`` counts them. ``graph`` is the
file minus both (operators, tensor records, names, signatures, metadata, alignment padding).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

_FLOAT32, _FLOAT16, _INT32, _INT8, _UINT8 = 0, 1, 2, 9, 3  # tflite TensorType codes


def _role(tensor_type: int) -> str:
    if tensor_type in (_INT8, _UINT8):
        return "weights_int8"
    if tensor_type == _INT32:
        return "bias_int32"
    if tensor_type in (_FLOAT32, _FLOAT16):
        return "float_unquantized"
    return "other_constants"


def size_breakdown(path: Path) -> dict[str, Any]:
    """Bytes per role (and element counts), quantization-parameter bytes, the rest, duplicated constants."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    content = Path(path).read_bytes()
    model = fb.read_model(bytearray(content))
    roles: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "tensors": 0, "elements": 0})
    qparams = {"bytes": 0, "tensors": 0}
    seen: set[str] = set()
    counted: set[int] = set()
    duplicated = data = 0
    float_left: list[tuple[int, str]] = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            q = t.quantization
            if q is not None and q.scale is not None and len(q.scale):
                qparams["bytes"] += 4 * len(q.scale) + 8 * len(q.zeroPoint if q.zeroPoint is not None else [])
                qparams["tensors"] += 1
            buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if buf is None or len(buf) == 0 or t.buffer in counted:
                continue
            counted.add(t.buffer)
            n, role = len(buf), _role(t.type)
            r = roles[role]
            elements = n // {_FLOAT32: 4, _INT32: 4, _FLOAT16: 2}.get(t.type, 1)
            r["bytes"], r["tensors"], r["elements"] = (
                r["bytes"] + n,
                r["tensors"] + 1,
                r["elements"] + elements,
            )
            data += n
            digest = hashlib.sha256(bytes(buf) + bytes([t.type])).hexdigest()
            duplicated += n if digest in seen else 0
            seen.add(digest)
            if role == "float_unquantized":
                float_left.append((n, t.name.decode("utf-8", "replace")))
    return {
        "file_bytes": len(content),
        "roles": dict(roles),
        "quantization_params": qparams,
        "graph_bytes": len(content) - data - qparams["bytes"],
        "duplicated_constant_bytes": duplicated,
        "largest_float_constants": [f"{name} ({n} B)" for n, name in sorted(float_left, reverse=True)[:5]],
        "operators": sum(len(sg.operators) for sg in model.subgraphs),
    }

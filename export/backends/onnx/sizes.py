"""Where the bytes of an ONNX file go: per initializer role, and what is not tensor data at all.

Roles follow the QDQ graph onnxruntime writes: an int8 initializer dequantized by ``DequantizeLinear`` is a
quantized weight, an int32 one a quantized bias (its scale is input scale x weight scale, per channel), input
1 / 2 of a ``QuantizeLinear`` / ``DequantizeLinear`` are scales / zero points, and a float initializer
feeding anything else stayed float. ``graph`` is the file minus all tensor data (nodes, names, types).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _role(init: Any, uses: list[tuple[str, int]]) -> str:
    import onnx

    dtype = init.data_type
    for op, slot in uses:
        if op in _QDQ and slot == 1:
            return "scales"
        if op in _QDQ and slot == 2:
            return "zero_points"
        if op == "DequantizeLinear" and slot == 0:
            return "bias_int32" if dtype == onnx.TensorProto.INT32 else "weights_int8"
    if dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return "float_unquantized"
    return "other_constants"


def size_breakdown(path: Path) -> dict[str, Any]:
    """Bytes per role (and element counts), the graph's own bytes and bytes of duplicated constants."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    uses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            uses[name].append((node.op_type, slot))
    roles: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "tensors": 0, "elements": 0})
    seen: set[str] = set()
    duplicated = data = 0
    float_left: list[tuple[int, str]] = []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        n = int(np.asarray(arr).nbytes)
        role = _role(init, uses[init.name])
        r = roles[role]
        r["bytes"], r["tensors"], r["elements"] = r["bytes"] + n, r["tensors"] + 1, r["elements"] + arr.size
        data += n
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.dtype).encode()).hexdigest()
        duplicated += n if digest in seen else 0
        seen.add(digest)
        if role == "float_unquantized":
            float_left.append((n, f"{init.name} -> {','.join(op for op, _ in uses[init.name])}"))
    total = Path(path).stat().st_size
    return {
        "file_bytes": total,
        "roles": dict(roles),
        "graph_bytes": total - data,
        "duplicated_constant_bytes": duplicated,
        "largest_float_constants": [f"{name} ({n} B)" for n, name in sorted(float_left, reverse=True)[:5]],
        "nodes": len(model.graph.node),
    }

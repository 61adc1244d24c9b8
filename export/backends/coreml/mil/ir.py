"""A small, executor-owned copy of one ML Program function: typed vars, ops in order, constant values.

Decoupled from coremltools' PyMIL objects so that running a program needs no coremltools import and tests can
tamper with it (e.g. swap a permutation) without touching coremltools internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: MIL element type name -> NumPy dtype used to hold values of that type.
NP_DTYPES: dict[str, Any] = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class VarInfo:
    """A typed value of the program: ``dtype`` is the MIL element type ("fp16", "int32", "bool", "str"...)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None  # None for unknown/symbolic shapes


@dataclass(frozen=True)
class OpNode:
    """One non-const operation. ``inputs`` maps a parameter to a var name, or a tuple of names (concat)."""

    type: str
    name: str
    inputs: dict[str, str | tuple[str, ...]]
    outputs: tuple[VarInfo, ...]


@dataclass(frozen=True)
class IODesc:
    """A model input or output as the app sees it (from the model description) and as the program types it."""

    name: str
    kind: str  # "image" | "tensor"
    shape: tuple[int, ...] | None
    dtype: str  # program element type ("fp32", "fp16", "int32")
    color_space: str | None = None  # "RGB" | "BGR" | "GRAYSCALE" for images
    # ImageType preprocessing as found in the program (Core ML's ML Program stores it as ops on the input).
    scale: float | None = None
    bias: tuple[float, ...] | None = None
    description: str = ""
    # Flexible inputs: the only shapes the model takes (Core ML EnumeratedShapes); None for a fixed shape.
    enumerated: tuple[tuple[int, ...], ...] | None = None


@dataclass
class Graph:
    """One function of an ML Program."""

    inputs: dict[str, VarInfo]
    outputs: tuple[str, ...]  # var names returned by the function, in order
    ops: list[OpNode]
    consts: dict[str, Any]  # const var name -> np.ndarray (or str)
    const_types: dict[str, VarInfo] = field(default_factory=dict)
    opset: str = ""

    def producers(self) -> dict[str, OpNode]:
        return {o.name: op for op in self.ops for o in op.outputs}

    def uses_fp16(self) -> bool:
        return any(o.dtype == "fp16" for op in self.ops for o in op.outputs) or any(
            v.dtype == "fp16" for v in self.inputs.values()
        )

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.type] = out.get(op.type, 0) + 1
        return dict(sorted(out.items()))

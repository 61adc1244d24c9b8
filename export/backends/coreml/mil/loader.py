"""Read a saved ``.mlpackage`` into the executor's IR through coremltools' own spec and MIL-proto readers.

No Core ML runtime is involved: ``ct.utils.load_spec`` parses the protobuf, the MIL-proto frontend rebuilds
the PyMIL program and reads weights from the package's blob file, and we copy it into :mod:`.ir`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MilExecutorError, ProgramLoadError
from .executor import Program
from .ir import Graph, IODesc, OpNode, VarInfo

log = logging.getLogger(__name__)

_IMAGE_COLOR = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}
_ARRAY_DTYPE = {65568: "fp32", 65600: "fp64", 131104: "int32", 65552: "fp16", 131080: "int8"}


def load_program(
    path: str | Path | Any, *, fp16_emulation: bool | None = None, function: str = "main"
) -> Program:
    """Load an ML Program for NumPy execution.

    Args:
        path: a ``.mlpackage`` directory (or a ``coremltools.models.MLModel`` of an ML Program).
        fp16_emulation: round values to float16 wherever the program types them fp16 (the default ``None``
            turns it on exactly when the program has fp16 values). ``False`` runs an fp16 program in float32
            (weights stay as stored), which isolates rounding effects from graph errors.
        function: the program function to run.

    Raises:
        ProgramLoadError: not an ML Program package, unreadable spec or weights.
    """
    spec, weights_dir, source = _read_spec(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise ProgramLoadError(
            f"{source}: model type is {spec.WhichOneof('Type')!r}, not an ML Program "
            "(neuralNetwork models are not supported)"
        )
    try:
        from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

        prog = milproto_load(spec, spec.specificationVersion, weights_dir or "")
    except Exception as err:  # coremltools raises bare ValueError/KeyError/RuntimeError here
        raise ProgramLoadError(f"{source}: coremltools could not read the ML Program: {err}") from err
    if function not in prog.functions:
        raise ProgramLoadError(f"{source}: no function {function!r} (has: {', '.join(prog.functions)})")
    graph = graph_from_pymil(prog.functions[function])
    inputs, outputs = _io_descs(spec, graph)
    if fp16_emulation is None:
        fp16_emulation = graph.uses_fp16()
    log.debug("loaded %s: %d ops, fp16_emulation=%s", source, len(graph.ops), fp16_emulation)
    return Program(
        graph,
        inputs=inputs,
        outputs=outputs,
        fp16_emulation=fp16_emulation,
        source=source,
        metadata=dict(spec.description.metadata.userDefined),
    )


def _read_spec(path: str | Path | Any) -> tuple[Any, str | None, str]:
    import coremltools as ct

    if isinstance(path, ct.models.MLModel):
        return path.get_spec(), path.weights_dir, "<MLModel>"
    p = Path(path)
    if not p.exists():
        raise ProgramLoadError(f"{p}: no such file or directory")
    try:
        spec = ct.utils.load_spec(str(p))
    except Exception as err:
        raise ProgramLoadError(f"{p}: not a readable Core ML model: {err}") from err
    weights = p / "Data" / "com.apple.CoreML" / "weights"
    if p.is_dir():
        from coremltools.models.utils import _try_get_weights_dir_path

        found = _try_get_weights_dir_path(str(p))
        weights = Path(found) if found else weights
    return spec, str(weights) if weights.exists() else None, str(p)


def _dtype_name(t: Any) -> str:
    from coremltools.converters.mil.mil import types

    if types.is_tensor(t):
        t = t.get_primitive()
    return types.builtin_to_string(t)


def _shape(var: Any) -> tuple[int, ...] | None:
    try:
        shp = tuple(var.shape)
    except Exception:
        return None
    if all(isinstance(d, (int, np.integer)) for d in shp):
        return tuple(int(d) for d in shp)
    return None


def _const_value(var: Any) -> Any:
    v = var.val
    if isinstance(v, str):
        return v
    arr = np.asarray(v)
    if arr.dtype == object:
        raise MilExecutorError(f"const {var.name!r} holds a non-numeric value of type {type(v).__name__}")
    return arr


def graph_from_pymil(fn: Any) -> Graph:
    """Copy a PyMIL function into the executor's IR (const ops become values, nested blocks are refused)."""
    inputs = {n: VarInfo(n, _dtype_name(v.sym_type), _shape(v)) for n, v in fn.inputs.items()}
    consts: dict[str, Any] = {}
    const_types: dict[str, VarInfo] = {}
    ops: list[OpNode] = []
    for op in fn.operations:
        outs = tuple(VarInfo(o.name, _dtype_name(o.sym_type), _shape(o)) for o in op.outputs)
        if op.op_type == "const":
            consts[op.outputs[0].name] = _const_value(op.outputs[0])
            const_types[op.outputs[0].name] = outs[0]
            continue
        if getattr(op, "blocks", None):
            raise MilExecutorError(
                f"op {op.op_type} {op.name!r} has nested blocks (control flow), "
                "which the executor does not run"
            )
        ins: dict[str, str | tuple[str, ...]] = {}
        for k, v in op.inputs.items():
            ins[k] = tuple(x.name for x in v) if isinstance(v, (list, tuple)) else v.name
        ops.append(OpNode(op.op_type, op.name, ins, outs))
    return Graph(
        inputs=inputs,
        outputs=tuple(v.name for v in fn.outputs),
        ops=ops,
        consts=consts,
        const_types=const_types,
        opset=str(getattr(fn, "opset_version", "") or ""),
    )


def _image_preprocessing(graph: Graph, name: str) -> tuple[float | None, tuple[float, ...] | None]:
    """ImageType scale/bias as the converter wrote them: ``mul`` / ``add`` ops named ``<input>__scaled__`` /
    ``<input>__biased__`` on the input (ML Programs keep no preprocessing block in the spec)."""
    scale = bias = None
    for op in graph.ops:
        if op.type not in ("mul", "add") or name not in op.inputs.values():
            continue
        other = [v for v in op.inputs.values() if v != name and isinstance(v, str)]
        val = graph.consts.get(other[0]) if other else None
        if val is None:
            continue
        if op.type == "mul" and op.name.startswith(f"{name}__scaled__"):
            scale = float(np.asarray(val).reshape(-1)[0])
            name = op.outputs[0].name
        elif op.type == "add" and op.name.startswith(f"{name.split('__')[0]}__biased__"):
            bias = tuple(float(b) for b in np.asarray(val).reshape(-1))
    return scale, bias


def _enumerated(feature: Any) -> tuple[tuple[int, ...], ...] | None:
    """The shapes a flexible multi-array input takes (Core ML refuses any other); None when fixed."""
    array = feature.type.multiArrayType
    if array.WhichOneof("ShapeFlexibility") != "enumeratedShapes":
        return None
    return tuple(tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes)


def _io_descs(spec: Any, graph: Graph) -> tuple[tuple[IODesc, ...], tuple[IODesc, ...]]:
    ins = []
    for f in spec.description.input:
        kind = f.type.WhichOneof("Type")
        var = graph.inputs.get(f.name)
        dtype = var.dtype if var else _ARRAY_DTYPE.get(f.type.multiArrayType.dataType, "?")
        shape = var.shape if var else None
        if kind == "imageType":
            scale, bias = _image_preprocessing(graph, f.name)
            ins.append(
                IODesc(
                    f.name,
                    "image",
                    shape,
                    dtype,
                    _IMAGE_COLOR.get(f.type.imageType.colorSpace, "?"),
                    scale,
                    bias,
                    f.shortDescription,
                )
            )
        else:
            desc = f.shortDescription
            ins.append(IODesc(f.name, "tensor", shape, dtype, description=desc, enumerated=_enumerated(f)))
    outs = []
    prod = graph.producers()
    for f in spec.description.output:
        op = prod.get(f.name)
        info = next((o for o in op.outputs if o.name == f.name), None) if op else None
        outs.append(
            IODesc(
                f.name,
                "tensor",
                info.shape if info else None,
                info.dtype if info else _ARRAY_DTYPE.get(f.type.multiArrayType.dataType, "?"),
                description=f.shortDescription,
            )
        )
    return tuple(ins), tuple(outs)

"""Core ML structural checks: what can be read from a saved ``.mlpackage`` without running it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.export.spec import EncoderExport


def structural_checks(path: Path, enc: EncoderExport) -> dict[str, Any]:
    """I/O names and shapes, op census, compute dtypes, weights and metadata of a saved package."""
    import coremltools as ct

    problems: list[str] = []
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as err:
        return {"problems": [f"saved package does not reload: {err}"]}
    io = _io_summary(spec)
    want_in = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    want_out = [s.name for s in enc.outputs] or ["embedding"]
    if [i["name"] for i in io["inputs"]] != [want_in]:
        problems.append(f"inputs are {[i['name'] for i in io['inputs']]}, expected [{want_in!r}]")
    if [o["name"] for o in io["outputs"]] != want_out:
        problems.append(f"outputs are {[o['name'] for o in io['outputs']]}, expected {want_out}")
    if io["inputs"]:
        problems += _check_input(io["inputs"][0], enc)
    out_shape = io["outputs"][0]["shape"] if io["outputs"] else []
    if out_shape and enc.outputs and out_shape[-1:] != list(enc.outputs[0].shape[-1:]):  # [] when flexible
        problems.append(
            f"output shape {io['outputs'][0]['shape']} does not end in {enc.outputs[0].shape[-1]}"
        )
    if not spec.HasField("mlProgram"):
        return {"problems": problems + ["not an ML Program"], **io}
    census, dtypes, n_weights, n_elements = _op_census(spec)
    if census.get("batch_norm"):
        problems.append(f"{census['batch_norm']} batch_norm op(s) left: reparameterization incomplete")
    meta = dict(spec.description.metadata.userDefined)
    missing = sorted(k for k in enc.metadata if meta.get(k) != str(enc.metadata[k]))
    if missing:
        problems.append(f"user_defined_metadata lacks or changed: {', '.join(missing)}")
    weight_file = Path(path) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return {
        **io,
        "spec_version": int(spec.specificationVersion),
        "op_count": int(sum(census.values())),
        "op_census": dict(sorted(census.items())),
        "compute_dtypes": dict(sorted(dtypes.items())),
        "weight_tensors": n_weights,
        "weight_elements": n_elements,
        "weight_bytes": weight_file.stat().st_size if weight_file.exists() else 0,
        "problems": problems,
    }


def _io_summary(spec: Any) -> dict[str, Any]:
    def feature(f: Any) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            t = f.type.imageType
            cs = type(t).ColorSpace.Name(t.colorSpace)
            return {"name": f.name, "kind": "image", "shape": [1, 3, t.height, t.width], "color_space": cs}
        if kind == "multiArrayType":
            t = f.type.multiArrayType
            dt = type(t).ArrayDataType.Name(t.dataType)
            enum = [list(s.shape) for s in t.enumeratedShapes.shapes]
            out = {"name": f.name, "kind": "tensor", "shape": list(t.shape), "dtype": dt}
            if enum:
                out["enumerated_shapes"] = enum
            return out
        return {"name": f.name, "kind": str(kind), "shape": []}

    return {
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
    }


def _check_input(feature: Mapping[str, Any], enc: EncoderExport) -> list[str]:
    problems = []
    if enc.encoder == "image":
        size = enc.image_size or int(enc.example_inputs[0].shape[-1])
        if feature["shape"][-2:] != [size, size]:
            problems.append(f"image input is {feature['shape']}, expected {size}x{size}")
        if feature["kind"] == "image" and feature.get("color_space") != "RGB":
            problems.append(f"image input color space is {feature.get('color_space')}, expected RGB")
    else:
        ctx = int(enc.example_inputs[0].shape[-1])
        if feature["kind"] != "tensor" or feature.get("dtype") != "INT32" or feature["shape"][-1:] != [ctx]:
            problems.append(f"text input is {feature}, expected INT32 [*, {ctx}]")
    return problems


def _op_census(spec: Any) -> tuple[Counter, Counter, int, int]:
    """Ops by type (consts excluded), compute ops by output dtype, blob-stored weights (count, elements)."""
    from coremltools.proto import MIL_pb2

    census: Counter = Counter()
    dtypes: Counter = Counter()
    n_weights = n_elements = 0

    def walk(block: Any) -> None:
        nonlocal n_weights, n_elements
        for op in block.operations:
            if op.type == "const":
                val = op.attributes.get("val")
                if val is not None and val.WhichOneof("value") == "blobFileValue":
                    n_weights += 1
                    dims = val.type.tensorType.dimensions
                    n_elements += int(np.prod([d.constant.size for d in dims])) if dims else 1
                continue
            census[op.type] += 1
            if op.outputs and op.outputs[0].type.WhichOneof("type") == "tensorType":
                dtypes[MIL_pb2.DataType.Name(op.outputs[0].type.tensorType.dataType)] += 1
            for inner in op.blocks:
                walk(inner)

    for fn in spec.mlProgram.functions.values():
        walk(fn.block_specializations[fn.opset])
    return census, dtypes, n_weights, n_elements

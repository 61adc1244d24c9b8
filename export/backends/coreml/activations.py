"""8-bit activation quantization of a Core ML program (the "A8" of W8A8 / A8W4), calibrated with our executor.

coremltools' ``linear_quantize_activations`` measures activation ranges by running the model in Apple's
runtime (``MLModel.predict`` with every intermediate as an output), which only exists on macOS. We trace every
op output over the calibration inputs with the NumPy executor (``coreml.mil``, fp16 emulation on, so the
values are those of the fp16 program), choose each tensor's range, equalize the ranges around ``concat`` ops
as coremltools does, and hand them to coremltools' own graph passes, which insert the ``quantize`` ->
``dequantize`` pairs (int8, per tensor) before and after convs, linears, pools and adds.

A range is not the tensor's min/max but the symmetric clip of least int8 round-trip squared error over the
calibration values (``mse_range``): a few extreme values would otherwise set a step so coarse that the bulk
rounds to a few levels. On the trained fixture this is what brings the W8A8 image encoder within the
accuracy gate (docs/compression.md, "Core ML W8A8 and A8W4").
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

Stats = dict[str, dict[str, float]]


def _feed(prog: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """One calibration sample as the program takes it: ImageType pixels in [0, 255], a float tensor in
    [0, 1] or int32 token ids, repeated up to the program's fixed batch."""
    desc = prog.inputs[0]
    sample = np.asarray(x)[None]
    batch = int(desc.shape[0]) if desc.shape else 1
    if batch > 1:
        sample = np.repeat(sample, batch, axis=0)
    if desc.dtype.startswith("int"):
        return {desc.name: sample.astype(np.int32)}
    scale = 255.0 if desc.kind == "image" else 1.0
    return {desc.name: sample.astype(np.float32) * scale}


_QUANTIZED_OPS = ("conv", "linear", "avg_pool", "max_pool", "add")  # what the insertion passes match


def integer_ops(path: Path) -> list[str]:
    """Ops the insertion passes would match that compute on integers (the text encoder's index arithmetic):
    an int8 quantize takes float input only, so these are left alone."""
    from .mil import load_program

    g = load_program(path).graph
    dtypes = {**{k: v.dtype for k, v in g.inputs.items()}, **{k: v.dtype for k, v in g.const_types.items()}}
    dtypes.update({o.name: o.dtype for op in g.ops for o in op.outputs})
    return [
        op.name
        for op in g.ops
        if op.type in _QUANTIZED_OPS
        and any(
            not dtypes.get(str(op.inputs.get(k)), "fp").startswith("fp") for k in ("x", "y") if k in op.inputs
        )
    ]


_VALUES_PER_SAMPLE = 1024  # values kept per tensor and sample for the range search (plus its min and max)
_CLIP_FRACTIONS = np.linspace(0.2, 1.0, 41)  # candidate ranges, as fractions of max|x|


def mse_range(values: np.ndarray) -> float:
    """The symmetric range r (int8 step r / 127) among ``_CLIP_FRACTIONS`` x max|values| whose quantize ->
    dequantize round trip has the least squared error over ``values``."""
    a = np.asarray(values, np.float64).reshape(-1)
    top = float(np.abs(a).max()) if a.size else 0.0
    if top == 0.0:
        return 0.0
    errors = []
    for r in top * _CLIP_FRACTIONS:
        step = r / 127.0
        errors.append(float(np.mean((np.clip(np.rint(a / step), -127, 127) * step - a) ** 2)))
    return float(top * _CLIP_FRACTIONS[int(np.argmin(errors))])


def _subsample(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = v.reshape(-1).astype(np.float32)
    if flat.size > _VALUES_PER_SAMPLE:
        flat = flat[rng.integers(0, flat.size, _VALUES_PER_SAMPLE)]
    return np.concatenate([flat, [v.min(), v.max()]]).astype(np.float32)


def activation_stats(path: Path, samples: Iterable[np.ndarray]) -> tuple[Stats, int]:
    """``({var: {"rmin", "rmax"}}, samples run)`` over every float value of the program (inputs and op
    outputs), the format coremltools' insertion passes read: [-r, r] with r = ``mse_range`` of the values
    seen (a seeded subsample per sample, with its extremes), within the observed min/max."""
    from .mil import load_program

    prog = load_program(path)
    rng = np.random.default_rng(0)  # the same calibration set gives the same ranges
    seen: dict[str, list[np.ndarray]] = {}
    n = 0
    for x in samples:
        n += 1
        for name, v in prog.trace(_feed(prog, x)).items():
            v = np.asarray(v)
            if v.size == 0 or not np.issubdtype(v.dtype, np.floating):
                continue
            seen.setdefault(name, []).append(_subsample(v, rng))
    stats = {}
    for k, parts in seen.items():
        a = np.concatenate(parts)
        r = mse_range(a)
        stats[k] = {"rmin": max(float(a.min()), -r), "rmax": min(float(a.max()), r)}
    _share_concat_ranges(prog.graph, stats)
    return stats, n


def _share_concat_ranges(graph: Any, stats: Stats) -> None:
    """Inputs and output of a concat (transitively) share one range, so the quantized concat needs no
    rescale (coremltools' calibration does the same)."""
    groups: list[set[str]] = []
    for op in graph.ops:
        if op.type != "concat":
            continue
        values = op.inputs.get("values", ())
        members = {*(values if isinstance(values, tuple) else (values,)), *(o.name for o in op.outputs)}
        overlapping = [g for g in groups if g & members]
        for g in overlapping:
            groups.remove(g)
            members |= g
        groups.append(members)
    for g in groups:
        known = [stats[n] for n in g if n in stats]
        if not known:
            continue
        shared = {"rmin": min(s["rmin"] for s in known), "rmax": max(s["rmax"] for s in known)}
        for n in g:
            if n in stats:
                stats[n] = dict(shared)


def quantize_activations(model: Any, stats: Stats, skip: Iterable[str] = ()) -> Any:
    """``model`` (an fp16 ``MLModel``) with int8 quantize/dequantize pairs inserted by coremltools' passes,
    scales from ``stats``, except around the ops named in ``skip``; the result needs iOS17 (the
    ``quantize``/``dequantize`` ops)."""
    import coremltools.optimize.coreml as cto
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
        op_name_configs=dict.fromkeys(skip),
    )
    passes = []
    for name in (
        "compression::insert_prefix_quantize_dequantize_pair",
        "compression::insert_suffix_quantize_dequantize_pair",
    ):
        p = PASS_REGISTRY[name]
        p.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
        passes.append(p)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    return model_utils._apply_graph_pass(
        model, passes, spec_version=_SPECIFICATION_VERSION_IOS_17, skip_model_load=True
    )


def count_ops(model: Any, op_type: str) -> int:
    spec = model.get_spec()
    return sum(
        op.type == op_type
        for fn in spec.mlProgram.functions.values()
        for block in fn.block_specializations.values()
        for op in block.operations
    )

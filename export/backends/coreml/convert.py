"""Core ML conversion: ``torch.export`` -> coremltools ML Program, with the input plan (ImageType scale/bias
folding) and the metadata an app reads."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export import __version__
from mobileclip_export.errors import ExportFailure, UsageError
from mobileclip_export.export.spec import EncoderExport, TensorSpec

from .options import COMPUTE_UNITS


@dataclass(frozen=True)
class InputPlan:
    """How the encoder's input is presented to Core ML and what module realises it."""

    module: Any
    is_image: bool  # ImageType (True) or TensorType
    scale: float = 1.0
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normalization: str = ""  # human description for notes/metadata


def convert(
    enc: EncoderExport, plan: InputPlan, precision: str, opts: Mapping[str, Any], keep_fp32: set[str]
) -> Any:
    """Convert ``plan.module`` to an ML Program (ops named in ``keep_fp32`` stay fp32 in an fp16 program)."""
    import coremltools as ct
    import torch

    batch_sizes = opts["batch_sizes"]
    example = enc.example_inputs[0]
    dynamic = None
    if batch_sizes and len(batch_sizes) > 1:
        # Export with batch 2 and a symbolic batch dim: torch.export specialises size-1 dims.
        example = example[:1].repeat(2, *([1] * (example.dim() - 1)))
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max(batch_sizes))},)
    elif batch_sizes:
        example = example[:1].repeat(batch_sizes[0], *([1] * (example.dim() - 1)))
    try:
        with torch.no_grad():
            ep = torch.export.export(plan.module, (example,), dynamic_shapes=dynamic).run_decompositions({})
        _drop_aliases(ep)
        if precision == "fp32":
            compute_precision = ct.precision.FLOAT32
        elif keep_fp32:
            compute_precision = ct.transform.FP16ComputePrecision(op_selector=fp16_selector(keep_fp32))
        else:
            compute_precision = ct.precision.FLOAT16
        model = ct.convert(
            ep,
            inputs=[_ct_input(ct, enc, plan, batch_sizes)],
            outputs=[ct.TensorType(name=s.name, dtype=np.float32) for s in output_specs(enc, opts)],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, opts["minimum_deployment_target"]),
            compute_precision=compute_precision,
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[opts["compute_units"]]),
            skip_model_load=True,  # the post-convert load compiles the model; slow and macOS-only anyway
        )
    except (UsageError, ExportFailure):
        raise
    except Exception as err:  # converter internals raise anything; keep the cause, add context
        raise ExportFailure(f"coremltools failed to convert the {enc.encoder} encoder: {err}") from err
    _set_metadata(model, enc, plan, precision, opts, keep_fp32)
    return model


def input_plan(enc: EncoderExport, batch_sizes: tuple[int, ...] | None) -> InputPlan:
    if enc.encoder != "image":
        return InputPlan(module=enc.module, is_image=False)
    mean = tuple(enc.normalize_mean or (0.0, 0.0, 0.0))
    std = tuple(enc.normalize_std or (1.0, 1.0, 1.0))
    if batch_sizes and batch_sizes != (1,):
        return InputPlan(
            module=enc.module,
            is_image=False,
            normalization="image input is a float32 tensor in [0,1] (ImageType carries one image; batch "
            f"sizes {','.join(map(str, batch_sizes))} asked); normalization stays in the graph",
        )
    if len(set(std)) == 1 and enc.module_without_normalize is not None:
        s = float(std[0])
        bias = tuple(float(-m / s) + 0.0 for m in mean)  # + 0.0 turns -0.0 into 0.0
        return InputPlan(
            module=enc.module_without_normalize,
            is_image=True,
            scale=1.0 / (255.0 * s),
            bias=bias,  # type: ignore[arg-type]
            normalization=f"mean {list(mean)} / std {s:g} folded into ImageType "
            f"scale 1/(255*{s:g}), bias {list(bias)}",
        )
    reason = "std differs across channels" if len(set(std)) > 1 else "no module without normalization given"
    return InputPlan(
        module=enc.module,
        is_image=True,
        scale=1.0 / 255.0,
        normalization=f"ImageType scale 1/255; mean/std normalization kept in the graph ({reason})",
    )


def _drop_aliases(ep: Any) -> None:
    """Remove ``aten.alias`` nodes in place: a no-op view (e.g. a full-size slice of a causal-mask buffer)
    that torch.export keeps and coremltools 9.0 has no converter for ("Unsupported fx node alias")."""
    import torch

    graph = ep.graph_module.graph
    aliases = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.alias.default]
    for node in aliases:
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    if aliases:
        graph.lint()
        ep.graph_module.recompile()


def _ct_input(ct: Any, enc: EncoderExport, plan: InputPlan, batch_sizes: tuple[int, ...] | None) -> Any:
    name = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    tail = tuple(enc.example_inputs[0].shape[1:])
    sizes = batch_sizes or (1,)
    if len(sizes) > 1:
        shape: Any = ct.EnumeratedShapes(shapes=[(b, *tail) for b in sizes], default=(sizes[0], *tail))
    else:
        shape = (sizes[0], *tail)
    if plan.is_image:
        return ct.ImageType(
            name=name, shape=shape, color_layout=ct.colorlayout.RGB, scale=plan.scale, bias=list(plan.bias)
        )
    dtype = np.float32 if enc.encoder == "image" else np.int32
    return ct.TensorType(name=name, shape=shape, dtype=dtype)


def fp16_selector(keep: set[str]) -> Any:
    """op_selector for FP16ComputePrecision: False keeps an op in fp32.

    A kept op's direct consumers stay fp32 too: otherwise a cast to fp16 is inserted right before them and
    the overflowing value becomes inf all the same (e.g. a residual add feeding LayerNorm).
    """

    def producer(var: Any) -> Any:
        op = getattr(var, "op", None)
        while op is not None and op.op_type == "cast":
            op = getattr(op.inputs.get("x"), "op", None)
        return op

    def select(op: Any) -> bool:
        if op.name in keep:
            return False
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                src = producer(var)
                if src is not None and src.name in keep:
                    return False
        return True

    return select


def _set_metadata(
    model: Any, enc: EncoderExport, plan: InputPlan, precision: str, opts: Mapping[str, Any], keep: set[str]
) -> None:
    model.author = "mobileclip-export " + __version__
    model.license = enc.metadata.get(
        "license",
        "weights: Apple ML Research Model Terms of Use (apple-amlr) unless the checkpoint says otherwise; "
        "random weights carry no license",
    )
    model.version = enc.metadata.get("version", __version__)
    model.short_description = (
        f"{enc.model_name} {enc.encoder} encoder -> {enc.metadata.get('embed_dim', '')}-d embedding "
        f"(un-normalized; L2-normalize before cosine similarity). Core ML {precision}."
    ).replace(" -> -d", " ->")
    in_name = model.input_description._fd_spec[0].name
    if plan.is_image:
        model.input_description[in_name] = (
            f"RGB image {enc.image_size}x{enc.image_size}, resized and center-cropped as in the manifest; "
            f"the model scales pixels itself ({plan.normalization})"
        )
    elif enc.encoder == "image":
        model.input_description[in_name] = "float32 RGB NCHW image in [0,1], not normalized"
    else:
        model.input_description[in_name] = (
            "int32 token ids [batch, context_length] from the CLIP BPE tokenizer (zero padded, EOT kept)"
        )
    for out in model.output_description._fd_spec:
        spec = next((s for s in enc.outputs if s.name == out.name), None)
        model.output_description[out.name] = (
            f"float32 {spec.name} {list(spec.shape)}: {spec.description}"
            if spec is not None and len(enc.outputs) > 1
            else "float32 embedding [batch, embed_dim], not L2-normalized"
        )
    meta = model.user_defined_metadata
    for key, value in enc.metadata.items():
        meta[str(key)] = str(value)
    meta["coreml.precision"] = precision
    meta["coreml.minimum_deployment_target"] = str(opts["minimum_deployment_target"])
    meta["coreml.compute_units"] = str(opts["compute_units"])
    meta["coreml.input_preprocessing"] = plan.normalization or "token ids"
    if plan.is_image:
        meta["coreml.image_scale"] = repr(plan.scale)
        meta["coreml.image_bias"] = ",".join(repr(b) for b in plan.bias)
    if keep:
        meta["coreml.fp32_ops"] = ",".join(sorted(keep))


def remove_artifact(path: Path) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path)
    elif Path(path).exists():
        Path(path).unlink()


def input_spec(enc: EncoderExport, plan: InputPlan, opts: Mapping[str, Any]) -> TensorSpec:
    name = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    shape = (max(opts["batch_sizes"] or (1,)), *tuple(enc.example_inputs[0].shape[1:]))
    dtype = "image" if plan.is_image else ("float32" if enc.encoder == "image" else "int32")
    return TensorSpec(name, shape, dtype, "enumerated batch sizes" if opts["batch_sizes"] else "")


def output_specs(enc: EncoderExport, opts: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
    """Every declared output (the embedding; a classifier adds logits first), at the largest batch size."""
    batch = max(opts["batch_sizes"] or (1,))
    bases = enc.outputs or (TensorSpec("embedding", (1, 0), "float32"),)
    return tuple(TensorSpec(b.name, (batch, *b.shape[1:]), "float32", b.description) for b in bases)


def feeds(plan: InputPlan, enc: EncoderExport, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runner-convention input (image float in [0,1]) -> what the program takes (ImageType: pixels 0..255)."""
    name = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    if enc.encoder == "image":
        x = np.asarray(x, dtype=np.float32)
        return {name: x * 255.0 if plan.is_image else x}
    return {name: np.asarray(x, dtype=np.int32)}

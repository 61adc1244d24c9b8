"""Core ML ML Program (``.mlpackage``) backend, converted with coremltools from ``torch.export``.

Image encoders take a Core ML ``ImageType`` (RGB pixels 0..255) so the app hands over a CVPixelBuffer and
the model does the scaling; when the variant's std is equal across channels the mean/std are folded into
the ImageType scale/bias (``module_without_normalize``), otherwise normalization stays in the graph.
Prediction needs macOS; on Linux the NumPy MIL executor in ``coreml_mil`` stands in as a reference.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export import __version__
from mobileclip_export.errors import ExportFailure, MissingDependencyError, UsageError
from mobileclip_export.export.target import (
    ArtifactInfo,
    EncoderExport,
    OptionSpec,
    Runner,
    RuntimeUnavailable,
    Target,
    TensorSpec,
)

log = logging.getLogger(__name__)

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "iOS26", "macOS13", "macOS14", "macOS15", "macOS26")
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}
_FP16_MAX_ROUNDS = 6  # each round keeps newly overflowing ops (and their consumers) in fp32
_CAST_SUFFIX = "_cast_fp16"


def parse_batch_sizes(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,4,8"`` (or a sequence of ints) -> sorted unique positive batch sizes."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        sizes = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        raise UsageError(f"--batch-sizes wants comma-separated positive integers, got {value!r}") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-sizes wants comma-separated positive integers, got {value!r}")
    return tuple(sizes)


@dataclass(frozen=True)
class _InputPlan:
    """How the encoder's input is presented to Core ML and what module realises it."""

    module: Any
    is_image: bool  # ImageType (True) or TensorType
    scale: float = 1.0
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normalization: str = ""  # human description for notes/metadata


class CoreMLTarget(Target):
    name = "coreml"
    order = 10
    aliases = ("mlpackage", "ios")
    description = "Core ML ML Program (.mlpackage) via coremltools; runs on macOS/iOS"
    extension = ".mlpackage"
    extra = "coreml"
    requires = ("coremltools",)
    version_dists = ("coremltools", "torch")
    precisions = ("fp16", "fp32")
    default_precision = "fp16"
    options = (
        OptionSpec(
            "minimum_deployment_target", "oldest OS the model must load on", "iOS17", DEPLOYMENT_TARGETS
        ),
        OptionSpec("compute_units", "Core ML compute units used to load/run it", "all", tuple(COMPUTE_UNITS)),
        OptionSpec(
            "batch_sizes",
            "enumerated batch sizes, e.g. 1,4,8 (fixed batch 1 by default; an image encoder then takes a "
            "float tensor in [0,1] instead of an ImageType, which carries one image)",
            None,
            None,
            parse_batch_sizes,
        ),
    )

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        if opts.get("batch_sizes") is not None:
            opts["batch_sizes"] = parse_batch_sizes(opts["batch_sizes"])
        return super().validate(precision, opts)

    # ---------------------------------------------------------------- export
    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        opts = self.validate(precision, options)
        plan = _input_plan(enc, opts["batch_sizes"])
        notes = [plan.normalization] if plan.normalization else []
        keep_fp32: set[str] = set()
        model = self._convert(enc, plan, precision, opts, keep_fp32)
        model.save(str(path))
        details: dict[str, Any] = {
            "minimum_deployment_target": opts["minimum_deployment_target"],
            "compute_units": opts["compute_units"],
            "batch_sizes": list(opts["batch_sizes"] or (1,)),
            "image_input": plan.is_image,
            "image_scale": plan.scale if plan.is_image else None,
            "image_bias": list(plan.bias) if plan.is_image else None,
        }
        if precision == "fp16":
            keep_fp32, guard_note = self._fp16_guard(enc, plan, opts, path)
            notes.append(guard_note)
            details["fp32_ops"] = sorted(keep_fp32)
        return ArtifactInfo(
            path=path,
            inputs=(_input_spec(enc, plan, opts),),
            outputs=(_output_spec(enc, opts),),
            notes=notes,
            details=details,
        )

    def _convert(
        self,
        enc: EncoderExport,
        plan: _InputPlan,
        precision: str,
        opts: Mapping[str, Any],
        keep_fp32: set[str],
    ) -> Any:
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
                ep = torch.export.export(plan.module, (example,), dynamic_shapes=dynamic).run_decompositions(
                    {}
                )
            _drop_aliases(ep)
            if precision == "fp32":
                compute_precision = ct.precision.FLOAT32
            elif keep_fp32:
                compute_precision = ct.transform.FP16ComputePrecision(op_selector=_fp16_selector(keep_fp32))
            else:
                compute_precision = ct.precision.FLOAT16
            model = ct.convert(
                ep,
                inputs=[_ct_input(ct, enc, plan, batch_sizes)],
                outputs=[
                    ct.TensorType(name=enc.outputs[0].name if enc.outputs else "embedding", dtype=np.float32)
                ],
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

    def _fp16_guard(
        self, enc: EncoderExport, plan: _InputPlan, opts: Mapping[str, Any], path: Path
    ) -> tuple[set[str], str]:
        """Find ops whose fp16 values overflow (reference executor), keep them in fp32, convert again."""
        try:
            from mobileclip_export.export.backends.coreml_mil import (
                FeedError,
                MilExecutorError,
                find_fp16_overflows,
            )
        except ImportError:
            return set(), "fp16 overflow check skipped: the coreml_mil reference executor is not available"
        x = enc.example_inputs[0].detach().cpu().numpy()[:1]
        batch = (opts["batch_sizes"] or (1,))[0]  # the program's default shape
        feeds = _feeds(plan, enc, np.repeat(x, batch, axis=0))
        keep: set[str] = set()
        for _ in range(_FP16_MAX_ROUNDS):
            try:
                overflowing = find_fp16_overflows(path, feeds)
            except (MilExecutorError, FeedError) as err:  # e.g. an op it lacks: the export stands
                log.warning("fp16 overflow check could not run: %s", err)
                return keep, f"fp16 overflow check skipped: the reference executor failed ({err})"
            if not overflowing:
                if not keep:
                    return keep, "fp16 overflow check: no op overflows fp16 on the example input"
                return keep, f"fp16 overflow guard: kept {len(keep)} op(s) in fp32: {', '.join(sorted(keep))}"
            new = {_base_name(n) for n in overflowing} - keep
            if not new:
                break
            log.info("fp16 overflow in %s; converting again with them in fp32", sorted(new))
            keep |= new
            model = self._convert(enc, plan, "fp16", opts, keep)
            _remove(path)
            model.save(str(path))
        raise ExportFailure(
            f"Core ML fp16 overflows in {sorted(overflowing)} even with {len(keep)} op(s) kept in fp32; "
            "export with --precision fp32"
        )

    # ------------------------------------------------------------------ load
    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        opts = {k: v for k, v in options.items() if k in {o.name for o in self.options}}
        if sys.platform == "darwin":
            return _MacRunner(path, opts.get("compute_units") or "all")
        try:
            from mobileclip_export.export.backends.coreml_mil import MilExecutorError, load_program
        except ImportError as err:
            raise RuntimeUnavailable(
                f"numeric check needs macOS (Core ML prediction is macOS-only): {err}"
            ) from None
        runner = _ReferenceRunner(path, load_program)
        try:  # a program the executor cannot run (op or flexible-shape gap) is unverified, not wrong
            runner.probe()
        except MilExecutorError as err:
            raise RuntimeUnavailable(
                f"the coreml_mil reference executor cannot run this program ({err}); "
                "numeric check needs macOS"
            ) from None
        return runner

    # ------------------------------------------------------------ structure
    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        import coremltools as ct

        problems: list[str] = []
        try:
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        except Exception as err:
            return {"problems": [f"saved package does not reload: {err}"]}
        io = _io_summary(spec)
        want_in = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
        want_out = enc.outputs[0].name if enc.outputs else "embedding"
        if [i["name"] for i in io["inputs"]] != [want_in]:
            problems.append(f"inputs are {[i['name'] for i in io['inputs']]}, expected [{want_in!r}]")
        if [o["name"] for o in io["outputs"]] != [want_out]:
            problems.append(f"outputs are {[o['name'] for o in io['outputs']]}, expected [{want_out!r}]")
        if io["inputs"]:
            problems += _check_input(io["inputs"][0], enc)
        out_shape = io["outputs"][0]["shape"] if io["outputs"] else []
        if (
            out_shape and enc.outputs and out_shape[-1:] != list(enc.outputs[0].shape[-1:])
        ):  # [] when flexible
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


# ---------------------------------------------------------------- helpers: conversion
def _input_plan(enc: EncoderExport, batch_sizes: tuple[int, ...] | None) -> _InputPlan:
    if enc.encoder != "image":
        return _InputPlan(module=enc.module, is_image=False)
    mean = tuple(enc.normalize_mean or (0.0, 0.0, 0.0))
    std = tuple(enc.normalize_std or (1.0, 1.0, 1.0))
    if batch_sizes and batch_sizes != (1,):
        return _InputPlan(
            module=enc.module,
            is_image=False,
            normalization="image input is a float32 tensor in [0,1] (ImageType carries one image; batch "
            f"sizes {','.join(map(str, batch_sizes))} asked); normalization stays in the graph",
        )
    if len(set(std)) == 1 and enc.module_without_normalize is not None:
        s = float(std[0])
        bias = tuple(float(-m / s) + 0.0 for m in mean)  # + 0.0 turns -0.0 into 0.0
        return _InputPlan(
            module=enc.module_without_normalize,
            is_image=True,
            scale=1.0 / (255.0 * s),
            bias=bias,  # type: ignore[arg-type]
            normalization=f"mean {list(mean)} / std {s:g} folded into ImageType "
            f"scale 1/(255*{s:g}), bias {list(bias)}",
        )
    reason = "std differs across channels" if len(set(std)) > 1 else "no module without normalization given"
    return _InputPlan(
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


def _ct_input(ct: Any, enc: EncoderExport, plan: _InputPlan, batch_sizes: tuple[int, ...] | None) -> Any:
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


def _base_name(op_name: str) -> str:
    """The op's name at the time the fp16 pass sees it (the pass appends ``_cast_fp16``)."""
    return op_name[: -len(_CAST_SUFFIX)] if op_name.endswith(_CAST_SUFFIX) else op_name


def _fp16_selector(keep: set[str]) -> Any:
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
    model: Any, enc: EncoderExport, plan: _InputPlan, precision: str, opts: Mapping[str, Any], keep: set[str]
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
    out_name = model.output_description._fd_spec[0].name
    model.output_description[out_name] = "float32 embedding [batch, embed_dim], not L2-normalized"
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


def _remove(path: Path) -> None:
    import shutil

    if Path(path).is_dir():
        shutil.rmtree(path)
    elif Path(path).exists():
        Path(path).unlink()


def _input_spec(enc: EncoderExport, plan: _InputPlan, opts: Mapping[str, Any]) -> TensorSpec:
    name = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    shape = (max(opts["batch_sizes"] or (1,)), *tuple(enc.example_inputs[0].shape[1:]))
    dtype = "image" if plan.is_image else ("float32" if enc.encoder == "image" else "int32")
    return TensorSpec(name, shape, dtype, "enumerated batch sizes" if opts["batch_sizes"] else "")


def _output_spec(enc: EncoderExport, opts: Mapping[str, Any]) -> TensorSpec:
    base = enc.outputs[0] if enc.outputs else TensorSpec("embedding", (1, 0), "float32")
    return TensorSpec(
        base.name, (max(opts["batch_sizes"] or (1,)), *base.shape[1:]), "float32", base.description
    )


def _feeds(plan: _InputPlan, enc: EncoderExport, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runner-convention input (image float in [0,1]) -> what the program takes (ImageType: pixels 0..255)."""
    name = enc.inputs[0].name if enc.inputs else ("image" if enc.encoder == "image" else "text")
    if enc.encoder == "image":
        x = np.asarray(x, dtype=np.float32)
        return {name: x * 255.0 if plan.is_image else x}
    return {name: np.asarray(x, dtype=np.int32)}


# ---------------------------------------------------------------- helpers: structure
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


# ---------------------------------------------------------------- runners
class _RowRunner(Runner):
    """Runs a fixed-batch program chunk by chunk (padding the last chunk) and stacks the embeddings."""

    def __init__(self, path: Path):
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        f = spec.description.input[0]
        self.path, self.input_name, self.output_name = path, f.name, spec.description.output[0].name
        self.is_image = f.type.WhichOneof("Type") == "imageType"
        array = f.type.multiArrayType
        self.is_text = not self.is_image and array.dataType == type(array).INT32
        # ImageType carries one image; a tensor input runs at its default (first enumerated) batch size.
        self.batch = 1 if self.is_image or not array.shape else int(array.shape[0])
        if self.is_image:
            self.sample_shape: tuple[int, ...] = (3, f.type.imageType.height, f.type.imageType.width)
        else:
            self.sample_shape = tuple(int(d) for d in array.shape[1:])

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        x = inputs[self.input_name] if self.input_name in inputs else next(iter(inputs.values()))
        rows = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i : i + self.batch]
            pad = self.batch - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            rows.append(np.asarray(self._run_chunk(chunk)).reshape(self.batch, -1)[: self.batch - pad])
        return np.concatenate(rows, axis=0).astype(np.float32)

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _ReferenceRunner(_RowRunner):
    is_deployment_runtime = False

    def __init__(self, path: Path, load_program: Any):
        super().__init__(path)
        self.program = load_program(path)
        self.label = "coreml_mil reference executor (NumPy), not Apple's runtime"

    def probe(self) -> None:
        """Run once on a neutral input of the default shape (raises the executor's error)."""
        shape = (self.batch, *self.sample_shape)
        self._run_chunk(np.zeros(shape, np.int32) if self.is_text else np.full(shape, 0.5, np.float32))

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        if self.is_text:
            feed = np.asarray(x, dtype=np.int32)
        else:
            feed = np.asarray(x, dtype=np.float32) * (255.0 if self.is_image else 1.0)
        out = self.program.run({self.input_name: feed})
        return np.asarray(out[self.output_name] if self.output_name in out else next(iter(out.values())))


class _MacRunner(_RowRunner):
    def __init__(self, path: Path, compute_units: str):
        import coremltools as ct

        super().__init__(path)
        self.model = ct.models.MLModel(
            str(path), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        )
        self.label = f"Core ML (coremltools {ct.__version__}, compute units {compute_units})"
        if self.is_image:
            self.label += "; image fed as 8-bit RGB"
            if importlib.util.find_spec("PIL") is None:  # coremltools takes ImageType inputs as PIL images
                raise MissingDependencyError("running a Core ML image model needs Pillow: pip install pillow")

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        if self.is_image:
            from PIL import Image

            # ImageType takes 8-bit pixels: exact when the [0,1] input sits on the 1/255 grid.
            pixels = np.clip(np.rint(x[0].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            feed: Any = Image.fromarray(pixels, "RGB")
        else:
            feed = np.asarray(x, dtype=np.int32 if self.is_text else np.float32)
        return np.asarray(self.model.predict({self.input_name: feed})[self.output_name])


TARGET = CoreMLTarget

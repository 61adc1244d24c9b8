"""ONNX target: torch.onnx dynamo exporter -> one self-contained ``.onnx`` file, run with onnxruntime.

Facts this file is built around (see shared docs, dependencies.md):
- opset 18 is what the dynamo exporter reliably writes; a lower request can silently come back as 18, so we
  read the opset from the saved file and refuse a mismatch instead of recording a lie.
- weights are embedded (``external_data=False``) so an artifact is one file; ONNX protobuf caps that at 2 GB.
- the exporter names graph values after aten ops, so a text model already has a value called ``embedding``
  (the token lookup); we name the graph I/O after export, renaming any clashing inner value first.
- fp16 keeps fp32 I/O (cast in the graph) so apps feed the same arrays at either precision.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.backends.onnx.forms import gelu_for_fusion
from mobileclip_export.export.compression.precisions import (
    AUTO_KEEP_HELP,
    AUTO_KEEP_OPTION,
    INT8,
    INT8_STATIC,
    KEEP_FP_HELP,
    KEEP_FP_OPTION,
    parse_layers,
)
from mobileclip_export.export.image_input import IMAGE_INPUT_OPTION, wrap_runner
from mobileclip_export.export.spec import (
    ArtifactInfo,
    EncoderExport,
    OptionSpec,
    Runner,
    RuntimeUnavailable,
    TensorSpec,
    num_threads_option,
)
from mobileclip_export.export.target import Target

if TYPE_CHECKING:  # torch stays out of target listing and --help (see export/target.py)
    from torch import nn

log = logging.getLogger(__name__)
QUANTIZED = (INT8, INT8_STATIC)  # onnxruntime.quantization of the fp32 graph (_onnx_quantize.py)

_MAX_SINGLE_FILE = 2 * 1024**3 - 1
_OUTPUT_NAME = "embedding"


def _half_wrapper(module: nn.Module) -> nn.Module:
    """The encoder in fp16 with fp32 embeddings out; float inputs are cast in the graph."""
    import torch
    from torch import nn

    class HalfWrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(module).half().eval()
            self.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_floating_point():
                x = x.half()
            return self.inner(x).float()

    return HalfWrapper()


def _rename_value(graph: Any, old: str, new: str) -> None:
    """Rename a value everywhere in ``graph`` (node inputs/outputs, graph I/O, initializers)."""
    if old == new:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _all_value_names(graph: Any) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _set_io_names(model: Any, input_names: list[str], output_names: list[str]) -> None:
    graph = model.graph
    wanted = list(zip([v.name for v in graph.input], input_names)) + list(
        zip([v.name for v in graph.output], output_names)
    )
    taken = _all_value_names(graph)
    for current, target in wanted:
        if current == target:
            continue
        if target in taken:  # an inner value already uses the name: move it aside first
            k = 0
            while f"{target}_inner{k}" in taken:
                k += 1
            _rename_value(graph, target, f"{target}_inner{k}")
            taken.add(f"{target}_inner{k}")
        _rename_value(graph, current, target)
        taken.add(target)


def _census(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


class OnnxRunner(Runner):
    is_deployment_runtime = True

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if num_threads:  # 0/None lets onnxruntime use every core
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        threads = f", {num_threads} intra-op threads" if num_threads else ""
        self.label = f"onnxruntime {ort.__version__} (CPUExecutionProvider{threads})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items() if k in self.input_names}
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}; this model takes {self.input_names}")
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


def _quantize(enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path) -> dict[str, Any]:
    from mobileclip_export.export.compression.calibration import calibration_inputs

    from .quantize import quantize_file

    calib = (enc.inputs[0].name, calibration_inputs(enc)) if precision == INT8_STATIC else None
    return quantize_file(path, precision, parse_layers(options.get(KEEP_FP_OPTION)), calib)


def _trace(enc: EncoderExport, precision: str, opset: int, dynamic: bool) -> Any:
    """The encoder as an ONNX ModelProto from the dynamo exporter (converter errors wrapped with context)."""
    import torch

    module = _half_wrapper(enc.module) if precision == "fp16" else enc.module
    dynamic_shapes = None
    example = tuple(enc.example_inputs)
    if dynamic:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
        # torch.export specializes a size-1 dimension to the constant 1, so trace with batch 2.
        example = tuple(torch.cat([x, x]) for x in example)
    # The exporter logs one warning per optional torchvision op it cannot register; not our concern.
    reg_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = reg_log.level
    reg_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                opset_version=opset,
                external_data=False,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                optimize=True,
            )
    except Exception as err:  # converter errors come in many types; wrap with context
        raise ExportFailure(f"onnx: torch.onnx.export failed for the {enc.encoder} encoder: {err}") from err
    finally:
        reg_log.setLevel(old_level)
    if program is None:
        raise ExportFailure("torch.onnx.export returned no program")
    return program.model_proto


def _finalize(model: Any, enc: EncoderExport, precision: str, opset: int, path: Path) -> int:
    """Names, opset check, metadata, checker, then the single-file write; returns the opset written."""
    import onnx

    _set_io_names(model, [enc.inputs[0].name], [s.name for s in enc.outputs] or [_OUTPUT_NAME])
    got_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportFailure(f"onnx: asked for opset {opset} but the exporter wrote opset {got_opset}")
    model.producer_name = "mobileclip-export"
    meta = {**enc.metadata, "precision": precision, "io_precision": "fp32"}
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    model.doc_string = f"{enc.model_name} {enc.encoder} encoder ({precision}); embedding is not L2-normalized"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:
        raise ExportFailure(f"onnx: checker rejected the {enc.encoder} graph: {err}") from err
    blob = model.SerializeToString()
    if len(blob) > _MAX_SINGLE_FILE:
        raise ExportFailure(f"onnx: model is {len(blob) / 1e9:.2f} GB, above the 2 GB single-file limit")
    path.write_bytes(blob)
    return got_opset


class OnnxTarget(Target):
    name = "onnx"
    order = 20
    aliases = ("ort", "onnxruntime")
    description = "ONNX (torch.onnx dynamo exporter), runs with onnxruntime"
    extension = ".onnx"
    extra = "onnx"
    export_weight = 8.0  # full-size S0 here: 3.4 + 0.8 s, 3.1 + 0.8 s
    requires = ("onnx", "onnxruntime", "onnxscript")
    version_dists = ("onnx", "onnxruntime", "onnxscript")
    precisions = ("fp32", "fp16", *QUANTIZED)
    default_precision = "fp32"
    options = (
        OptionSpec(
            "opset",
            "ONNX opset for the onnx target (the dynamo exporter supports >= 18)",
            18,
            type=int,
            minimum=18,
            maximum=23,
        ),
        OptionSpec(
            "dynamic_batch",
            "make the batch dimension dynamic (default: fixed batch 1; executorch: any batch 1..32)",
            False,
            None,
            bool,
        ),
        num_threads_option("onnxruntime"),
        IMAGE_INPUT_OPTION,
        OptionSpec(KEEP_FP_OPTION, KEEP_FP_HELP, None, None, parse_layers),
        OptionSpec(AUTO_KEEP_OPTION, AUTO_KEEP_HELP, False, None, bool),
    )

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        import onnx

        opset = int(options.get("opset", 18))
        dynamic = bool(options.get("dynamic_batch", False))
        model = _trace(enc, precision, opset, dynamic)
        gelus = gelu_for_fusion(model)  # onnxruntime fuses each into one Gelu kernel (forms.py)
        got_opset = _finalize(model, enc, precision, opset, Path(path))
        batch_dim = -1 if dynamic else 1
        inputs = tuple(
            TensorSpec(s.name, (batch_dim, *s.shape[1:]), s.dtype, s.description) for s in enc.inputs
        )
        outputs = tuple(
            TensorSpec(s.name, (batch_dim, *s.shape[1:]), "float32", s.description) for s in enc.outputs
        )
        notes = [f"opset {got_opset}", "fixed batch 1" if not dynamic else "dynamic batch (dim 0)"]
        if precision == "fp16":
            notes.append("fp16 weights and compute; fp32 inputs/outputs (cast inside the graph)")
        details = {
            "opset": got_opset,
            "op_census": _census(model),
            "n_nodes": len(model.graph.node),
            "gelu_in_fusable_order": gelus,
        }
        if precision in QUANTIZED:
            details.update(_quantize(enc, precision, options, Path(path)))
            details["op_census"] = _census(onnx.load(str(path)))
        return ArtifactInfo(path=Path(path), inputs=inputs, outputs=outputs, notes=notes, details=details)

    gemm_name = "onnxruntime MatMul"

    def gemm(self, n: int, threads: int) -> tuple[Any, str]:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), "W")
        spec = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in ("X", "Y")]
        node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        graph = helper.make_graph([node], "gemm", [spec[0]], [spec[1]], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).random((n, n), dtype=np.float32)
        return (lambda feeds: session.run(None, {"X": x})), f"onnxruntime {ort.__version__} MatMul"

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        if self.missing_dependencies():
            raise RuntimeUnavailable(
                f"onnxruntime is not installed ({', '.join(self.missing_dependencies())})"
            )
        return wrap_runner(OnnxRunner(Path(path), options.get("num_threads")), options)

    def profile(self, path: Path, inputs: Mapping[str, Any], threads: int, runs: int) -> Any:
        from mobileclip_export.export.backends.onnx.profile import profile_onnx

        return profile_onnx(Path(path), inputs, threads, runs)

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        import onnx

        model = onnx.load(str(path))
        census = _census(model)
        problems = []
        if "BatchNormalization" in census:
            problems.append(
                f"{census['BatchNormalization']} BatchNormalization node(s) left: not reparameterized"
            )
        in_names = [i.name for i in model.graph.input]
        out_names = [o.name for o in model.graph.output]
        want_in = [s.name for s in enc.inputs]
        if in_names != want_in:
            problems.append(f"inputs are {in_names}, expected {want_in}")
        want_out = [s.name for s in enc.outputs] or [_OUTPUT_NAME]
        if out_names != want_out:
            problems.append(f"outputs are {out_names}, expected {want_out}")
        if enc.encoder == "text":
            dtype = model.graph.input[0].type.tensor_type.elem_type
            if dtype != onnx.TensorProto.INT32:
                problems.append(
                    f"text input dtype is {onnx.TensorProto.DataType.Name(dtype)}, expected INT32"
                )
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get("model") != enc.model_name:
            problems.append("metadata_props lacks the model name")
        return {
            "n_batchnorm": census.get("BatchNormalization", 0),
            "n_nodes": len(model.graph.node),
            "inputs": in_names,
            "outputs": out_names,
            "metadata_keys": sorted(meta),
            "problems": problems,
        }



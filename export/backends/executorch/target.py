"""ExecuTorch ``.pte`` backend: ``torch.export`` -> ``to_edge_transform_and_lower`` -> ``.pte``.

Delegates: XNNPACK (default, runs here), Core ML (lowered ahead of time on Linux; the ``.pte`` runs only
where the CoreMLBackend is registered, i.e. Apple platforms) and portable (no delegate: the reference
kernels). The delegated / non-delegated operator census goes into ArtifactInfo so a user sees which ops
fell back to portable kernels.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobileclip_export.errors import ExportFailure, UsageError
from mobileclip_export.export.backends.executorch.runtime import set_threads
from mobileclip_export.export.backends.xnnpack.census import undelegated_census
from mobileclip_export.export.batching import BATCH_SIZE_OPTION, fixed_batch_of, with_batch
from mobileclip_export.export.compression.precisions import INT8
from mobileclip_export.export.image_input import IMAGE_INPUT_OPTION, wrap_export, wrap_runner
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

if TYPE_CHECKING:  # numpy stays out of module import: --help must not load it
    import numpy as np

log = logging.getLogger(__name__)

# c10::ScalarType codes reported by the runtime's TensorInfo.dtype()
_SCALAR_TYPES = {0: "uint8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}
DELEGATES = ("xnnpack", "coreml", "portable")
_BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend"}
# Upper bound of a dynamic batch: ExecuTorch plans activation memory for it at load, whatever is fed.
DYNAMIC_MAX = 32


class ExecuTorchTarget(Target):
    name = "executorch"
    order = 30
    aliases = ("pte",)
    description = "ExecuTorch .pte (XNNPACK delegate by default; Core ML delegate built ahead of time)"
    extension = ".pte"
    extra = "executorch"
    export_weight = 44.0  # full-size S0 here: image 29.5 + 0.8 s, text 12.2 + 1.0 s
    requires = ("executorch",)
    version_dists = ("executorch", "torch", "coremltools")
    precisions = ("fp32", "fp16", INT8)
    default_precision = "fp32"
    options = (
        OptionSpec("delegate", "backend the graph is lowered to", "xnnpack", DELEGATES),
        num_threads_option("the ExecuTorch threadpool"),
        IMAGE_INPUT_OPTION,
        BATCH_SIZE_OPTION,
        OptionSpec(
            "dynamic_batch",
            f"executorch: any batch 1..{DYNAMIC_MAX} in one call (memory is planned for {DYNAMIC_MAX})",
            False,
            None,
            bool,
        ),
    )

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().validate(precision, options)
        if precision == INT8 and opts["delegate"] != "xnnpack":
            raise UsageError("target 'executorch' supports int8 only with --delegate xnnpack")
        if precision == "fp16" and opts["delegate"] == "portable":
            raise UsageError(
                "target 'executorch' with --delegate portable supports only fp32 "
                "(use --delegate xnnpack or coreml for fp16)"
            )
        batched = opts["dynamic_batch"] or fixed_batch_of(opts) > 1
        if opts["dynamic_batch"] and fixed_batch_of(opts) > 1:
            raise UsageError("target 'executorch': give --batch-size or --dynamic-batch, not both")
        if batched and (precision == INT8 or opts["delegate"] == "coreml"):
            raise UsageError(
                "target 'executorch': --batch-size/--dynamic-batch are supported with --delegate xnnpack or "
                "portable at fp32/fp16 (int8 calibrates batch-1 samples; the Core ML delegate takes batch 1)"
            )
        return opts

    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        return with_batch(wrap_export(enc, options), fixed_batch_of(options))

    # ---------------------------------------------------------------- export
    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        opts = self.validate(precision, options)
        delegate = opts["delegate"]
        if delegate == "coreml":
            _require("coremltools", "the Core ML delegate", "coreml")
        module, example = _prepared(enc, precision, delegate)
        details: dict[str, Any] = {}
        try:
            if precision == INT8:
                module, details = _quantized(enc, module, example)
            program, census = _lower(module, example, delegate, precision, bool(opts["dynamic_batch"]))
        except (UsageError, ExportFailure):
            raise
        except Exception as err:  # lowering internals raise anything; keep the cause, add context
            raise ExportFailure(
                f"ExecuTorch lowering ({delegate}) of the {enc.encoder} encoder failed: {err}"
            ) from err
        Path(path).write_bytes(program.buffer)
        notes = _export_notes(delegate, precision, census, details, program.buffer)
        io_dtype = "float16" if precision == "fp16" and delegate != "coreml" else "float32"
        lead = (-1,) if opts["dynamic_batch"] else ()
        if opts["dynamic_batch"]:
            notes.append(f"dynamic batch 1..{DYNAMIC_MAX} (activation memory is planned for {DYNAMIC_MAX})")
        inputs = tuple(
            TensorSpec(
                s.name,
                (*lead, *s.shape[len(lead) :]),
                io_dtype if s.dtype in ("image", "float32") else s.dtype,
                s.description,
            )
            for s in enc.inputs
        )
        outputs = tuple(
            TensorSpec(s.name, (*lead, *s.shape[len(lead) :]), io_dtype, s.description) for s in enc.outputs
        )
        return ArtifactInfo(
            path=path,
            inputs=inputs,
            outputs=outputs,
            notes=notes,
            details={"delegate": delegate, "delegation": census, "io_dtype": io_dtype, **details},
        )

    # ------------------------------------------------------------------ load
    def card_section(self, records: list[dict[str, Any]], manifest: Mapping[str, Any]) -> str | None:
        from mobileclip_export.export.backends.xnnpack.android_cards import executorch_section

        return executorch_section(records)

    gemm_name = "XNNPACK"

    def gemm(self, n: int, threads: int) -> tuple[Any, str]:
        """A bias-free Linear lowered to XNNPACK (what the deployment runtimes execute)."""
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime

        x = torch.rand(n, n, generator=torch.Generator().manual_seed(1))
        linear = torch.nn.Linear(n, n, bias=False).eval()
        program = to_edge_transform_and_lower(
            torch.export.export(linear, (x,)), partitioner=[XnnpackPartitioner()]
        ).to_executorch()
        buffer = program.buffer
        loaded = Runtime.get().load_program(buffer)
        method = loaded.load_method("forward")

        def run(feeds: Any, keep: tuple = (buffer, loaded)) -> Any:
            return method.execute([x])  # ``keep``: the method dies with its program; hold both as long as it

        return run, "XNNPACK fully-connected (ExecuTorch runtime)"

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        import executorch.kernels.quantized  # noqa: F401 - registers embedding_byte & co. (int8 text programs)
        from executorch.runtime import Runtime, Verification

        runtime = Runtime.get()
        backends = _backends_used(Path(path))
        if backends == ["CoreMLBackend"] and not runtime.backend_registry.is_available("CoreMLBackend"):
            from .coreml_delegate import DelegateRunner

            return wrap_runner(DelegateRunner(Path(path), options), options)
        missing = [b for b in backends if not runtime.backend_registry.is_available(b)]
        if missing:
            raise RuntimeUnavailable(
                f"this .pte needs {', '.join(missing)}, not registered in this ExecuTorch runtime "
                "(the Core ML delegate runs on macOS/iOS only)"
            )
        program = runtime.load_program(Path(path), verification=Verification.Minimal)
        runner = _ETRunner(program, backends, set_threads(options.get("num_threads")))
        if options.get("dynamic_batch"):
            runner.sizes = tuple(range(1, runner.batch + 1))  # the program's upper bound
        return wrap_runner(runner, options)

    def profile(self, path: Path, inputs: Mapping[str, Any], threads: int, runs: int) -> Any:
        from mobileclip_export.export.backends.executorch.profile import profile_executorch

        if any(b != "XnnpackBackend" for b in _backends_used(Path(path))):
            return None  # only the XNNPACK / portable runtimes run here
        return profile_executorch(Path(path), inputs, threads, runs)

    # ------------------------------------------------------------ structure
    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        problems: list[str] = []
        data = Path(path).read_bytes()
        if len(data) < 8 or data[4:6] != b"ET":
            return {"problems": [f"{path} is not an ExecuTorch program (no 'ET' file identifier)"]}
        try:
            from executorch.exir._serialize._program import deserialize_pte_binary

            program = deserialize_pte_binary(data)
            program = getattr(program, "program", program)
        except Exception as err:
            return {"problems": [f"program does not deserialize: {err}"]}
        plans = {p.name: p for p in program.execution_plan}
        if "forward" not in plans:
            return {"problems": [f"no 'forward' method (methods: {sorted(plans)})"]}
        plan = plans["forward"]
        operators = sorted({op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators})
        delegates = [d.id for d in plan.delegates]
        if any("batch_norm" in op for op in operators):
            problems.append("a batch_norm operator runs on portable kernels: reparameterization incomplete")
        if len(plan.inputs) != len(enc.inputs):
            problems.append(f"forward takes {len(plan.inputs)} input(s), expected {len(enc.inputs)}")
        if len(plan.outputs) != len(enc.outputs):
            problems.append(f"forward returns {len(plan.outputs)} output(s), expected {len(enc.outputs)}")
        extra: dict[str, Any] = {}
        if "CoreMLBackend" in delegates:
            from .coreml_delegate import check_partitions

            extra["coreml_delegate"], found = check_partitions(data)
            problems += found
        return {
            **extra,
            "bytes": len(data),
            "methods": sorted(plans),
            "delegates": dict(Counter(delegates)),  # backend id -> delegated subgraphs
            "portable_operators": operators,
            "problems": problems,
        }


# ---------------------------------------------------------------- helpers
def _require(module: str, what: str, extra: str) -> None:
    import importlib.util

    from mobileclip_export.errors import MissingDependencyError, install_hint

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{what} needs {module}, which is not installed; install it with: {install_hint(extra)}"
        )


def _quantized(enc: EncoderExport, module: Any, example: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    from mobileclip_export.export.compression.calibration import calibration_inputs

    from .quantize import quantize_module

    return quantize_module(module, example, calibration_inputs(enc, limit=6))


def _prepared(enc: EncoderExport, precision: str, delegate: str) -> tuple[Any, tuple[Any, ...]]:
    """A fresh copy of the module (lowering consumes constants) and its example inputs in the right dtype.

    For XNNPACK the copy is rewritten into its XNNPACK form (``xnnpack_form``; fp16 keeps its fp32
    LayerNorm islands, see ``_half_with_fp32_layer_norms``).
    """
    import copy

    import torch

    from mobileclip_export.export.backends.xnnpack.form import xnnpack_module

    module = copy.deepcopy(enc.module).eval()
    example = tuple(x.detach().clone() for x in enc.example_inputs)
    if delegate == "xnnpack":
        module = xnnpack_module(module, layer_norm=precision != "fp16")
    # The Core ML delegate takes fp32 graphs and applies fp16 as its compute precision.
    if precision == "fp16" and delegate != "coreml":
        module = _half_with_fp32_layer_norms(module)
        example = tuple(x.half() if x.is_floating_point() else x for x in example)
    with torch.no_grad():
        module(*example)  # fail early, in eager, with a readable error if the dtype change broke something
    return module, example


def _half_with_fp32_layer_norms(module: Any) -> Any:
    """``module.half()`` except LayerNorms, which compute in fp32 on fp16 inputs.

    LayerNorm is never delegated to XNNPACK, and ExecuTorch 1.5.1's portable ``native_layer_norm`` kernel
    is wrong in fp16 from a normalized size of 256 up (max|diff| ~300 on unit-scale input; fine at 64), which
    turned full-size text encoders into noise (cosine ~0). Apple's own MobileCLIP uses fp32 LayerNorms too.
    """
    from torch import nn

    class Fp32Island(nn.Module):
        """Runs the wrapped (fp32) module on a float32 copy of its input and casts back."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x.float()).to(x.dtype)

    module = module.half()
    norms = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.LayerNorm) and name]
    for name, norm in norms:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Fp32Island(norm.float()))
    return module


def _transform_passes(delegate: str) -> list[Any] | None:
    if delegate != "xnnpack":
        return None
    from mobileclip_export.export.backends.xnnpack.form import shape_ops_as_views

    return [shape_ops_as_views()]


def _partitioners(delegate: str, precision: str) -> list[Any]:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
        return [CoreMLPartitioner(compile_specs=specs)]
    return []


def _lower(
    module: Any, example: tuple[Any, ...], delegate: str, precision: str, dynamic: bool = False
) -> tuple[Any, dict[str, Any]]:
    import torch
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    shapes = None
    if dynamic:  # traced at batch 2: torch.export specializes a size-1 dimension to the constant 1
        example = tuple(x[:1].repeat(2, *([1] * (x.dim() - 1))) for x in example)
        shapes = tuple({0: torch.export.Dim("batch", min=1, max=DYNAMIC_MAX)} for _ in example)
    with torch.no_grad():
        ep = torch.export.export(module, example, dynamic_shapes=shapes)
    # The views pass writes concrete shapes into view_copy; with a symbolic batch the XNNPACK serializer
    # refuses them ("Unsupported type encountered in int list", measured), so a dynamic program goes without.
    passes = None if dynamic else _transform_passes(delegate)
    partitioner = _partitioners(delegate, precision)
    edge = to_edge_transform_and_lower(ep, transform_passes=passes, partitioner=partitioner)
    info = get_delegation_info(edge.exported_program().graph_module)
    census = {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "by_operator": {
            op: {"delegated": b.delegated, "non_delegated": b.non_delegated}
            for op, b in sorted(info.delegation_by_operator.items())
            if op != "getitem"  # tuple unpacking, not an operator
        },
    }
    census["non_delegated_nodes"] = sum(v["non_delegated"] for v in census["by_operator"].values())
    census["delegated_nodes"] = sum(v["delegated"] for v in census["by_operator"].values())
    if delegate == "xnnpack":
        census.update(undelegated_census(census["by_operator"]))
    return edge.to_executorch(), census


def _export_notes(
    delegate: str, precision: str, census: Mapping[str, Any], details: dict[str, Any], buffer: bytes
) -> list[str]:
    """The artifact's notes (census, fallbacks, runtime needs); the Core ML delegate's settings go into
    ``details``."""
    notes = [_census_note(delegate, census)]
    batch_norms = sum(
        v["delegated"] + v["non_delegated"] for k, v in census["by_operator"].items() if "batch_norm" in k
    )
    if batch_norms:
        notes.append(f"{batch_norms} batch_norm op(s) in the graph: reparameterization incomplete")
    if precision == "fp16" and delegate == "xnnpack":
        notes.append(
            "fp16: the XNNPACK serializer (executorch 1.5.1) stores convolution weights in fp32 and "
            "converts them at load, so conv-heavy encoders shrink less than linear-heavy ones"
        )
    if "embedding" in details.get("compression", {}):
        notes.append(
            "int8 token embedding (quantized_decomposed::embedding_byte): the app's ExecuTorch runtime "
            "must link the quantized kernels (quantized_ops_lib / kernels_quantized) next to XNNPACK"
        )
    if delegate == "coreml":
        details["coreml_delegate"] = _coreml_settings(buffer)
        notes.append(
            "Core ML delegate: lowered ahead of time; runs only where CoreMLBackend is registered "
            "(Apple); verified by running its embedded Core ML program"
        )
    return notes


def _census_note(delegate: str, census: Mapping[str, Any]) -> str:
    fallback = sorted((k, v["non_delegated"]) for k, v in census["by_operator"].items() if v["non_delegated"])
    note = (
        f"{delegate}: {census['delegated_nodes']} op(s) delegated in {census['delegated_subgraphs']} "
        f"subgraph(s), {census['non_delegated_nodes']} on portable kernels"
    )
    return note + (f" ({', '.join(f'{k} x{n}' for k, n in fallback)})" if fallback else "")


def _coreml_settings(buffer: bytes) -> dict[str, Any]:
    """Compute precision/units of the Core ML partitions, read back from the written program."""
    from .coreml_delegate import coreml_partitions

    parts, shape = coreml_partitions(buffer)
    return {**shape, "partitions": [p.settings() for p in parts]}


def _backends_used(path: Path) -> list[str]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes())
    program = getattr(program, "program", program)
    return sorted({d.id for plan in program.execution_plan for d in plan.delegates})


class _ETRunner(Runner):
    def __init__(self, program: Any, backends: list[str], threads: int):
        import executorch.version

        self.method = program.load_method("forward")
        meta = self.method.metadata
        self.input_dtypes = [
            _SCALAR_TYPES[meta.input_tensor_meta(i).dtype()] for i in range(meta.num_inputs())
        ]
        self.batch = int(meta.input_tensor_meta(0).sizes()[0])
        self.sizes: tuple[int, ...] = (self.batch,)  # a fixed-shape program takes its own batch size only
        used = ", ".join(backends) if backends else "portable kernels only"
        plural = "s" if threads != 1 else ""
        self.label = f"ExecuTorch {executorch.version.__version__} runtime ({used}, {threads} thread{plural})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        import numpy as np
        import torch

        from mobileclip_export.export.batching import run_chunked

        want = getattr(torch, self.input_dtypes[0])

        def call(chunk: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(chunk)).to(want)
            return self.method.execute([t])[0].float().numpy()

        return run_chunked(call, np.asarray(next(iter(inputs.values()))), self.sizes).astype(np.float32)

"""Apple Core AI (``.aimodel``): converted with coreai-torch, verified on Linux by the Core AI runtime.

Route: ``torch.export`` -> ``run_decompositions(coreai_torch.get_decomp_table())`` -> ``TorchConverter`` ->
``AIProgram.save_asset``. The graph dtype follows the exported program (there is no precision flag), so fp16
means converting ``module.half()`` with half-precision image inputs. Token ids stay int32: the runtime rejects
64-bit inputs.

coreai-torch 0.4.3 has traps that do not raise (see docs/dependencies.md): ``avg_pool2d`` ignores
``count_include_pad=False`` (wrong numbers when padded), crashes on ``ceil_mode=True``, and narrows 64-bit
types silently. ``find_coreai_hazards`` scans the exported graph for them so the export fails with the reason
instead of producing a wrong artifact.

The Linux runtime is a single-threaded reference implementation: its outputs are a correctness oracle, its
latency is not a speed figure (``is_deployment_runtime = False``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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

if TYPE_CHECKING:  # torch stays out of target listing and --help (see export/target.py)
    import torch

log = logging.getLogger(__name__)

MAIN_ENTRYPOINT = "main"
RUNNER_LABEL = "Core AI CPU reference runtime (Linux), not device kernels; latency here is not a speed figure"
_PIP_HINT = "pip install 'mobileclip-export[coreai]'"
_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}
# Ops coreai-torch 0.4.3 cannot convert (docs/dependencies.md); caught here so the message names our model.
_UNSUPPORTED_PREFIXES = ("aten.sort", "aten.argsort", "aten._fft", "aten.fft_", "aten.var", "aten.std")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def function_name(encoder: str) -> str:
    """Entry point name of an encoder inside a multi-function asset."""
    return f"encode_{encoder}"


# ---------------------------------------------------------------- hazard scan


def _node_arguments(node: torch.fx.Node) -> dict[str, Any]:
    """All schema arguments of an ATen call, positional or keyword, with defaults filled."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else ""
    return f"{node.name}" + (f" (in {module})" if module else "")


def find_coreai_hazards(exported_program: torch.export.ExportedProgram) -> list[str]:
    """Reasons coreai-torch 0.4.3 would convert this (decomposed) program wrongly or crash; empty when safe.

    Checked: ``avg_pool2d`` with ``count_include_pad=False`` and padding (converted as if True: silently
    wrong), ``avg_pool2d`` with ``ceil_mode=True`` (converter crash), 64-bit user inputs (the runtime rejects
    them), float64 anywhere and used int64 constants outside the int32 range (narrowed silently), and ops the
    converter does not support. int64 intermediates such as ``argmax`` indices are fine: they are narrowed to
    int32 and stay in range.
    """
    import torch
    from torch.export.graph_signature import InputKind

    problems: list[str] = []
    graph = exported_program.graph
    specs = {s.arg.name: s for s in exported_program.graph_signature.input_specs if hasattr(s.arg, "name")}
    for node in graph.nodes:
        val = node.meta.get("val")
        dtype = getattr(val, "dtype", None)
        if node.op == "placeholder":
            spec = specs.get(node.name)
            if (
                spec is not None
                and spec.kind == InputKind.USER_INPUT
                and dtype in (torch.int64, torch.float64)
            ):
                problems.append(
                    f"input {node.name!r} is {dtype}: the Core AI runtime rejects 64-bit inputs "
                    "(trace token ids as int32, images as float32/float16)"
                )
                continue
            if spec is not None and dtype == torch.int64 and node.users:
                tensor = exported_program.state_dict.get(
                    spec.target, exported_program.constants.get(spec.target)
                )
                limit = torch.iinfo(torch.int32)
                if (
                    tensor is not None
                    and tensor.numel()
                    and (tensor.min() < limit.min or tensor.max() > limit.max)
                ):
                    problems.append(
                        f"int64 constant {spec.target!r} exceeds the int32 range it would be narrowed to"
                    )
        if dtype == torch.float64:
            problems.append(f"{_where(node)} is float64: coreai-torch narrows it to float32 silently")
        if node.op != "call_function":
            continue
        target = str(node.target)
        if target.startswith("aten.avg_pool"):
            args = _node_arguments(node)
            padding = args.get("padding", 0)
            padded = any(int(p) != 0 for p in (padding if isinstance(padding, (list, tuple)) else [padding]))
            if args.get("count_include_pad") is False and padded:
                problems.append(
                    f"{_where(node)}: {target} with count_include_pad=False and padding {list(padding)} "
                    "is converted as count_include_pad=True (silently wrong numbers)"
                )
            if args.get("ceil_mode") is True:
                problems.append(
                    f"{_where(node)}: {target} with ceil_mode=True crashes the coreai-torch converter"
                )
        elif target.startswith(_UNSUPPORTED_PREFIXES):
            problems.append(f"{_where(node)}: {target} is not supported by coreai-torch")
    return problems


# ---------------------------------------------------------------- conversion


def _import_converter() -> Any:
    try:
        import coreai_torch
    except ImportError as err:
        raise MissingDependencyError(
            f"target 'coreai' needs coreai-torch and coreai-core ({err}); install them with: {_PIP_HINT}"
        ) from err
    return coreai_torch


def _io_dtype(spec: TensorSpec, precision: str) -> str:
    return "float16" if precision == "fp16" and spec.dtype in ("float32", "float16", "image") else spec.dtype


def _example_args(enc: EncoderExport, precision: str) -> tuple[Any, ...]:
    import torch

    args = []
    for x in enc.example_inputs:
        if x.dtype.is_floating_point:
            x = x.to(torch.float16 if precision == "fp16" else torch.float32)
        elif x.dtype == torch.int64:  # the runtime only takes 32-bit ids
            x = x.to(torch.int32)
        args.append(x)
    return tuple(args)


def _exported_program(enc: EncoderExport, precision: str) -> torch.export.ExportedProgram:
    coreai_torch = _import_converter()
    import torch

    module = copy.deepcopy(enc.module).eval()  # never mutate the caller's module
    if precision == "fp16":
        module = module.half()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, _example_args(enc, precision))
        ep = ep.run_decompositions(coreai_torch.get_decomp_table())
    except Exception as err:  # noqa: BLE001 - wrap any tracer error with context
        raise ExportFailure(
            f"torch.export of the {enc.model_name} {enc.encoder} encoder failed: {err}"
        ) from err
    hazards = find_coreai_hazards(ep)
    if hazards:
        raise ExportFailure(
            f"the {enc.model_name} {enc.encoder} graph hits known coreai-torch traps: " + "; ".join(hazards)
        )
    return ep


def _metadata(facts: Mapping[str, str], description: str) -> Any:
    from coreai.runtime import AIModelAssetMetadata

    md = AIModelAssetMetadata()
    md.author = facts.get("author", "mobileclip-export")
    md.license = facts.get("license", "")
    md.model_description = facts.get("description", description)
    for key, value in facts.items():
        md.set_custom(str(key), str(value))
    return md


def _convert_and_save(
    entries: Sequence[tuple[EncoderExport, str]],
    precision: str,
    path: Path,
    facts: Mapping[str, str],
    description: str,
) -> None:
    """Convert ``(encoder, entry point)`` pairs into one asset at ``path``."""
    coreai_torch = _import_converter()
    converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)  # no local paths
    for enc, entrypoint in entries:
        ep = _exported_program(enc, precision)
        try:
            converter.add_exported_program(
                ep,
                input_names=[s.name for s in enc.inputs],
                output_names=[s.name for s in enc.outputs],
                entrypoint_name=entrypoint,
            )
        except ValueError as err:  # unsupported / non-decomposed ops
            raise ExportFailure(f"coreai-torch cannot convert the {enc.encoder} encoder: {err}") from err
    try:
        program = converter.to_coreai()
        program.save_asset(Path(path), metadata=_metadata(facts, description))
    except Exception as err:  # noqa: BLE001
        raise ExportFailure(f"Core AI conversion failed: {err}") from err


def _specs(enc: EncoderExport, precision: str, entrypoint: str) -> tuple[tuple[TensorSpec, ...], ...]:
    note = f" (function {entrypoint})"
    ins = tuple(
        TensorSpec(s.name, s.shape, _io_dtype(s, precision), s.description + note) for s in enc.inputs
    )
    outs = tuple(
        TensorSpec(s.name, s.shape, _io_dtype(s, precision), s.description + note) for s in enc.outputs
    )
    return ins, outs


# ---------------------------------------------------------------- runtime


class _CoreAIRunner(Runner):
    """Synchronous wrapper over the async ``coreai.runtime`` API.

    The asset is compiled once (to a temporary ``.aimodelx``) on a private event loop in its own thread, so it
    also works when the caller already runs an event loop (notebooks). Feeds select the function: each
    function is keyed by its set of input names, e.g. ``{"image": x}`` runs ``encode_image``.
    """

    is_deployment_runtime = False
    # The Linux reference runtime takes ~10-30 s per full-size fp16 S0 call: verify on a spread subset.
    max_verify_inputs = 3

    def __init__(self, path: Path):
        from coreai.authoring import AIModelAsset

        self.label = RUNNER_LABEL
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="coreai-runner", daemon=True)
        self._thread.start()
        self._context = AIModelAsset.load(Path(path)).executable()
        try:
            model = self._call(self._context.__aenter__())
        except Exception:
            self._stop()
            raise
        self._functions: dict[frozenset[str], tuple[Any, dict[str, Any], list[str]]] = {}
        for name in model.function_names:
            fn = model.load_function(name)
            desc = fn.desc
            inputs = {i: desc.input_descriptor(i) for i in desc.input_names}
            self._functions[frozenset(inputs)] = (fn, inputs, list(desc.output_names))
        self.function_names = list(model.function_names)

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        from coreai.runtime import NDArray

        key = frozenset(inputs)
        if key not in self._functions:
            known = "; ".join(f"{sorted(k)}" for k in self._functions)
            raise UsageError(
                f"no Core AI function takes inputs {sorted(key)}; the asset's functions take: {known}"
            )
        fn, descriptors, outputs = self._functions[key]
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        batch = next(iter(arrays.values())).shape[0]
        fixed_batch = all(d.shape and d.shape[0] == 1 for d in descriptors.values())
        if batch > 1 and fixed_batch:  # artifacts are exported for batch 1: run row by row
            return np.concatenate(
                [self.run({k: v[i : i + 1] for k, v in arrays.items()}) for i in range(batch)]
            )
        feeds = {}
        for name, value in arrays.items():
            dtype = _DTYPES[descriptors[name].dtype]
            if np.issubdtype(value.dtype, np.integer) and value.dtype != dtype:
                info = np.iinfo(dtype)
                if value.min() < info.min or value.max() > info.max:
                    raise UsageError(f"input {name!r} has values outside the {descriptors[name].dtype} range")
            feeds[name] = NDArray(np.ascontiguousarray(value.astype(dtype, copy=False)))
        result = self._call(fn(feeds))
        return result[outputs[0]].numpy().astype(np.float32)

    def _stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._context.__aexit__(None, None, None))  # removes the temporary .aimodelx
        finally:
            self._stop()


# ---------------------------------------------------------------- target


class CoreAITarget(Target):
    name = "coreai"
    order = 50
    aliases = ("aimodel",)
    description = "Apple Core AI .aimodel (coreai-torch); verified on Linux by the Core AI reference runtime"
    extension = ".aimodel"
    extra = "coreai"
    requires = ("coreai", "coreai_torch")
    version_dists = ("coreai-core", "coreai-torch")
    precisions = ("fp16", "fp32")
    default_precision = "fp16"
    options = (
        OptionSpec(
            "multifunction",
            "write one asset with both encoders as functions encode_image and encode_text",
            default=False,
            choices=(True, False),
            type=_parse_bool,
        ),
    )

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """One encoder as the single function ``main``. The ``multifunction`` option is the pipeline's cue to
        call ``export_multifunction`` instead; it does not change a single-encoder asset."""
        self._check(enc)
        description = f"MobileCLIP {enc.model_name} {enc.encoder} encoder ({precision})"
        facts = {**enc.metadata, "precision": precision, "entrypoint": MAIN_ENTRYPOINT}
        _convert_and_save([(enc, MAIN_ENTRYPOINT)], precision, path, facts, description)
        ins, outs = _specs(enc, precision, MAIN_ENTRYPOINT)
        return ArtifactInfo(
            path=Path(path),
            inputs=ins,
            outputs=outs,
            notes=self._notes(precision),
            details={"functions": {MAIN_ENTRYPOINT: self._io_details(ins, outs)}, "precision": precision},
        )

    def export_multifunction(
        self, encs: Sequence[EncoderExport], precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        """Both encoders in one ``.aimodel``, as functions ``encode_image`` and ``encode_text``.

        How the pipeline uses it: when ``options["multifunction"]`` is true, call this once with the image and
        text ``EncoderExport``s instead of ``export`` per encoder, then ``runner = target.load(path, opts)``;
        ``runner.run({"image": x})`` runs ``encode_image`` and ``runner.run({"text": ids})`` runs
        ``encode_text`` (the feed names pick the function), so the usual per-encoder parity check works on the
        one asset. ``ArtifactInfo.details["functions"]`` lists each function's inputs and outputs; each
        function's output keeps its single-encoder name (``embedding``).
        """
        if not encs:
            raise UsageError("export_multifunction needs at least one encoder")
        entries = []
        for enc in encs:
            self._check(enc)
            entries.append((enc, function_name(enc.encoder)))
        names = [e for _, e in entries]
        if len(set(names)) != len(names):
            raise UsageError(f"one function per encoder: got duplicate entry points {names}")
        all_inputs = [s.name for enc in encs for s in enc.inputs]
        if len(set(all_inputs)) != len(all_inputs):
            raise UsageError(f"input names must differ between functions to route feeds: {all_inputs}")
        facts = self._merged_facts(encs, names)
        facts.update(precision=precision, entrypoints=",".join(names))
        model = encs[0].model_name
        description = f"MobileCLIP {model} encoders ({precision}): functions {', '.join(names)}"
        _convert_and_save(entries, precision, path, facts, description)
        ins: list[TensorSpec] = []
        outs: list[TensorSpec] = []
        functions = {}
        for enc, entrypoint in entries:
            i, o = _specs(enc, precision, entrypoint)
            ins += i
            outs += o
            functions[entrypoint] = self._io_details(i, o)
        return ArtifactInfo(
            path=Path(path),
            inputs=tuple(ins),
            outputs=tuple(outs),
            notes=self._notes(precision),
            details={"functions": functions, "precision": precision, "multifunction": True},
        )

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        try:
            import coreai.runtime  # noqa: F401 - loads the native runtime
        except ImportError as err:
            raise RuntimeUnavailable(f"the Core AI runtime cannot load here ({err}); {_PIP_HINT}") from err
        return _CoreAIRunner(Path(path))

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        """Function I/O from the asset summary, op census, storage types; problems where they differ
        from ``enc`` (a multi-function asset is checked for ``enc``'s function)."""
        from coreai.authoring import AIModelAsset

        asset = AIModelAsset.load(Path(path))
        summary = asset.summary(include_statistics=True)
        functions = list(summary.function_names)
        entry = MAIN_ENTRYPOINT if MAIN_ENTRYPOINT in functions else function_name(enc.encoder)
        problems: list[str] = []
        if entry not in functions:
            return {"functions": functions, "problems": [f"no function {entry!r} in {functions}"]}
        inputs = {n: d for n, d in summary.function_inputs(entry)}
        outputs = {n: d for n, d in summary.function_outputs(entry)}
        for spec in enc.inputs:
            desc = inputs.get(spec.name)
            if desc is None:
                problems.append(f"input {spec.name!r} missing from {entry} (has {sorted(inputs)})")
            elif spec.dtype == "int32" and "Int32" not in desc:
                problems.append(f"input {spec.name!r} should be Int32, is {desc}")
        for spec in enc.outputs:
            if spec.name not in outputs:
                problems.append(f"output {spec.name!r} missing from {entry} (has {sorted(outputs)})")
        ops = {name: int(count) for name, count in summary.operation_distribution}
        problems += [f"op {op} left in the graph" for op in ops if "batch_norm" in op]
        storage = {name: int(count) for name, count in summary.storage_types}
        problems += [f"{t} tensors in the asset" for t in storage if t in ("Int64", "Float64")]
        return {
            "functions": functions,
            "inputs": inputs,
            "outputs": outputs,
            "op_census": ops,
            "storage_types": storage,
            "metadata": dict(asset.metadata.creator_defined_metadata),
            "problems": problems,
        }

    # ---- helpers ----
    @staticmethod
    def _check(enc: EncoderExport) -> None:
        if enc.encoder not in ("image", "text"):
            raise UsageError(f"unknown encoder {enc.encoder!r}; choose one of: image, text")

    @staticmethod
    def _notes(precision: str) -> list[str]:
        notes = ["verified with the Core AI CPU reference runtime on Linux; device kernels not exercised"]
        if precision == "fp16":
            notes.append(
                "fp16 graph (module.half()): image input and embedding are float16; "
                "the runner casts float32 feeds"
            )
        return notes

    @staticmethod
    def _io_details(ins: Sequence[TensorSpec], outs: Sequence[TensorSpec]) -> dict[str, Any]:
        return {
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in ins],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in outs],
        }

    @staticmethod
    def _merged_facts(encs: Sequence[EncoderExport], names: Sequence[str]) -> dict[str, str]:
        """Facts shared by all encoders stay flat; differing ones are prefixed with their function name."""
        keys = {k for enc in encs for k in enc.metadata}
        facts: dict[str, str] = {}
        for key in sorted(keys):
            values = [enc.metadata.get(key) for enc in encs]
            if all(v == values[0] for v in values):
                facts[key] = str(values[0])
            else:
                facts.update({f"{n}.{key}": str(v) for n, v in zip(names, values) if v is not None})
        return facts


TARGET = CoreAITarget

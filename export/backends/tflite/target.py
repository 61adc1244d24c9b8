"""TFLite / LiteRT (``.tflite``): converted with litert-torch, run with ai-edge-litert (XNNPACK).

One named signature per artifact (``encode_image`` / ``encode_text``) whose input keeps our feed name
(``image`` / ``text``) and whose output is ``embedding``; the flatbuffer's tensor names are
``<signature>_<input>`` and ``<signature>_embedding_output``. Token ids are traced as int32: with int64 the
converter fails to legalize ``tfl.arg_max``.

Precisions: ``fp32``; ``fp16`` = fp16 weights with fp32 activations (ai-edge-quantizer float casting, the
standard TFLite "float16 quantization": DEQUANTIZE ops feed the kernels; GPU/XNNPACK may compute in fp16 on
devices that support it); ``int8`` = dynamic-range int8 weights (``recipe.dynamic_wi8_afp32()``);
``int8-static`` = int8 weights and activations calibrated on the shipped photographs / captions
(``recipe.static_wi8_ai8()``, see ``_tflite_quantize``; float inputs and the output become int8 tensors), with
the LayerNorm ops in float32 and an int8 embedding table (``details.float32_ops`` lists what stays float).
litert-torch's own PT2E dynamic quantization is not used: it fails at run time on EMBEDDING_LOOKUP.

The export facts (``EncoderExport.metadata`` plus precision and signature) are embedded as JSON in the
flatbuffer's ``metadata`` table under the name ``mobileclip_export``; ``read_metadata`` reads them back.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.errors import ExportFailure, MissingDependencyError, UsageError, install_hint
from mobileclip_export.export.backends.tflite.quantize import from_output, is_quantized, quantize, to_input
from mobileclip_export.export.backends.xnnpack.census import delegated_ops
from mobileclip_export.export.batching import BATCH_SIZE_OPTION, fixed_batch_of, run_chunked, with_batch
from mobileclip_export.export.image_input import IMAGE_INPUT_OPTION, layout_of, wrap_export, wrap_runner
from mobileclip_export.export.spec import (
    ArtifactInfo,
    EncoderExport,
    Runner,
    RuntimeUnavailable,
    TensorSpec,
    num_threads_option,
)
from mobileclip_export.export.target import Target

log = logging.getLogger(__name__)

METADATA_NAME = "mobileclip_export"
_PIP_HINT = install_hint("tflite")
_EXPECTED_INPUT_DTYPES = {"int32": np.int32, "float32": np.float32, "image": np.float32, "uint8": np.uint8}


def signature_name(encoder: str) -> str:
    return f"encode_{encoder}"


def _named_io(module: Any, output_names: tuple[str, ...]) -> Any:
    """``module`` with our input names (keyword arguments) in the traced signature and named outputs."""
    from torch import nn

    class NamedIO(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, **inputs: Any) -> dict[str, Any]:
            out = self.module(*inputs.values())
            return dict(zip(output_names, out if isinstance(out, tuple) else (out,)))

    return NamedIO().eval()


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"target 'tflite' needs {what} ({err}); install it with: {_PIP_HINT}"
        ) from err


def _convert(enc: EncoderExport) -> bytes:
    litert_torch = _require("litert_torch", "litert-torch")
    import torch

    kwargs = {}
    for spec, x in zip(enc.inputs, enc.example_inputs):
        kwargs[spec.name] = x.to(torch.int32) if x.dtype == torch.int64 else x  # int64 fails on tfl.arg_max
    import copy

    from mobileclip_export.export.backends.xnnpack.form import xnnpack_module

    # LayerNorm is delegated as litert-torch lowers it; the EOT pooling becomes a one-hot matmul so the
    # XNNPACK delegate is one subgraph (the index arithmetic of a row gather would cut it in two).
    module = xnnpack_module(copy.deepcopy(enc.module).eval(), layer_norm=False)
    wrapper = _named_io(module, tuple(s.name for s in enc.outputs))
    try:
        with torch.no_grad():
            model = (
                litert_torch.Converter()
                .signature(signature_name(enc.encoder), wrapper, sample_kwargs=kwargs)
                .convert()
            )
        return bytes(model.model_content())
    except Exception as err:  # noqa: BLE001 - wrap converter errors with context
        raise ExportFailure(
            f"litert-torch could not convert the {enc.model_name} {enc.encoder} encoder: {err}"
        ) from err


def _with_metadata(content: bytes, facts: Mapping[str, str]) -> bytes:
    """Append (or replace) our JSON facts in the flatbuffer's metadata table."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for b in model.buffers:  # offset buffers come back as bytearray slices, which Pack writes byte by byte
        if b.data is not None and not isinstance(b.data, np.ndarray):
            b.data = np.frombuffer(bytes(b.data), dtype=np.uint8)
    buf = fb.BufferT()
    buf.data = np.frombuffer(json.dumps(dict(facts), sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _as_str(m.name) != METADATA_NAME]
    model.metadata = kept + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _as_str(name: str | bytes | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


def _root(path: Path) -> tuple[Any, Any]:
    from ai_edge_litert import schema_py_generated as fb

    data = Path(path).read_bytes()
    return fb, fb.Model.GetRootAs(data, 0)


def read_metadata(path: Path) -> dict[str, str]:
    """The facts embedded by ``export`` (empty when absent)."""
    _, model = _root(path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _as_str(entry.Name()) == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    return {}


def _opcodes(fb: Any, model: Any) -> list[tuple[str, str]]:
    """(builtin name, custom code) of each operator code of the flatbuffer."""
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # small codes live in the deprecated field
        codes.append((names.get(code, f"BUILTIN_{code}"), _as_str(oc.CustomCode())))
    return codes


def op_census(path: Path) -> tuple[dict[str, int], list[str]]:
    """Builtin op counts over all subgraphs, read from the flatbuffer (no runtime); custom/Flex op names."""
    fb, model = _root(path)
    codes = _opcodes(fb, model)
    census: dict[str, int] = {}
    custom: list[str] = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            name, custom_code = codes[graph.Operators(o).OpcodeIndex()]
            if name == "CUSTOM" or name.startswith("FLEX") or custom_code:
                name = custom_code or name
                custom.append(name)
            census[name] = census.get(name, 0) + 1
    return dict(sorted(census.items())), sorted(set(custom))


def ops_by_output_type(content: bytes) -> dict[str, dict[str, int]]:
    """Op counts of the main subgraph by the type of each op's first output, e.g. ``{"FLOAT32": {"MEAN":
    10}, "INT8": {...}}``: which ops of a quantized model compute in float, int16 or int8. QUANTIZE /
    DEQUANTIZE (the conversions the quantizer inserts) are left out."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(content, 0)
    codes = _opcodes(fb, model)
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    out: dict[str, dict[str, int]] = {}
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        name = codes[op.OpcodeIndex()][0]
        if name in ("QUANTIZE", "DEQUANTIZE") or op.OutputsLength() == 0:
            continue
        kind = types.get(graph.Tensors(op.Outputs(0)).Type(), "?")
        out.setdefault(kind, {})[name] = out.get(kind, {}).get(name, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def _io_entry(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Shape and dtype of a signature tensor, plus (scale, zero point) of a quantized float tensor."""
    entry = {"shape": detail["shape"].tolist(), "dtype": np.dtype(detail["dtype"]).name}
    if is_quantized(detail):
        entry["quantization"] = [float(v) for v in detail["quantization"]]
    return entry


class _LiteRTRunner(Runner):
    """The artifact's one signature, fed by our input names, in calls of the signature's fixed batch N (rows
    one by one at N = 1; a short last chunk padded). Resizing the input of a fixed-batch model instead was
    measured wrong: the image signature still returned one row for 8, the text one failed in RESHAPE."""

    def __init__(self, path: Path, num_threads: int):
        from ai_edge_litert.interpreter import Interpreter

        # preserve_all_tensors makes XNNPACK take every op as its own delegate node (S0 image: 497 instead
        # of 1, ~1.3x slower); the "latest features" XNNPACK flag measured no faster (x1.00, same bits).
        self.interpreter = Interpreter(
            model_path=str(path), num_threads=num_threads, experimental_preserve_all_tensors=False
        )
        self.interpreter.allocate_tensors()
        signatures = self.interpreter.get_signature_list()
        self.signature = next(iter(signatures))
        self._runner = self.interpreter.get_signature_runner(self.signature)
        self._inputs = self._runner.get_input_details()
        self._output_details = self._runner.get_output_details()
        declared = read_metadata(path).get("output_order", "").split(",")[0]
        outputs = signatures[self.signature]["outputs"]
        self._output = declared if declared in outputs else outputs[0]
        version = _version("ai-edge-litert") or "?"
        threads = f"{num_threads} thread" + ("s" if num_threads != 1 else "")
        self.label = f"ai-edge-litert {version} (interpreter, XNNPACK delegate, {threads})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if set(inputs) != set(self._inputs):
            raise UsageError(
                f"signature {self.signature!r} takes inputs {sorted(self._inputs)}, got {sorted(inputs)}"
            )
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        fixed = int(next(iter(self._inputs.values()))["shape"][0])
        if len(arrays) == 1 and next(iter(arrays.values())).shape[0] != fixed:
            (name, x), *_ = arrays.items()
            return run_chunked(lambda chunk: self._call({name: chunk}), x, (fixed,))
        return self._call(arrays)

    def _call(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {}
        for name, value in arrays.items():
            dtype = self._inputs[name]["dtype"]
            if np.issubdtype(value.dtype, np.integer) and value.dtype != dtype:
                info = np.iinfo(dtype)
                if value.min() < info.min or value.max() > info.max:
                    raise UsageError(f"input {name!r} has values outside the {np.dtype(dtype).name} range")
            value = to_input(value, self._inputs[name])  # int8-static: a quantized float input
            feeds[name] = np.ascontiguousarray(value.astype(dtype, copy=False))
        return from_output(self._runner(**feeds)[self._output], self._output_details[self._output])

    def close(self) -> None:
        self._runner = None
        self.interpreter = None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class TFLiteTarget(Target):
    name = "tflite"
    order = 40
    aliases = ("litert",)
    description = (
        "TFLite / LiteRT .tflite (litert-torch); verified with the ai-edge-litert interpreter (XNNPACK)"
    )
    extension = ".tflite"
    extra = "tflite"
    export_weight = 29.0  # full-size S0 here: image 18.0 + 0.7 s, text 9.7 + 0.6 s
    requires = ("litert_torch", "ai_edge_litert")
    version_dists = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")
    precisions = ("fp32", "fp16", "int8", "int8-static")
    default_precision = "fp32"
    options = (
        num_threads_option("the LiteRT interpreter"),
        IMAGE_INPUT_OPTION,
        BATCH_SIZE_OPTION,
    )

    def validate(self, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().validate(precision, options)
        if precision == "int8-static" and fixed_batch_of(out) > 1:
            raise UsageError("tflite int8-static calibrates batch-1 samples: export it with batch 1")
        if precision != "fp32" and importlib.util.find_spec("ai_edge_quantizer") is None:
            raise MissingDependencyError(
                f"tflite precision {precision} needs ai-edge-quantizer; install it with: {_PIP_HINT}"
            )
        return out

    def adapt_export(self, enc: EncoderExport, options: Mapping[str, Any]) -> EncoderExport:
        return with_batch(wrap_export(enc, options), fixed_batch_of(options))

    def export(
        self, enc: EncoderExport, precision: str, options: Mapping[str, Any], path: Path
    ) -> ArtifactInfo:
        content = _convert(enc)
        sig = signature_name(enc.encoder)
        quant: dict[str, Any] = {}
        if precision != "fp32":
            content, quant = quantize(content, precision, enc, sig)
        if precision == "int8-static":  # what computes in float / 16 bits, read back from the flatbuffer
            by_type = ops_by_output_type(content)
            quant.update(float32_ops=by_type.get("FLOAT32", {}), int16_ops=by_type.get("INT16", {}))
        # The signature lists outputs sorted by name; the runner returns the first one *declared*.
        order = ",".join(s.name for s in enc.outputs)
        facts = {**enc.metadata, "precision": precision, "signature": sig, "output_order": order}
        Path(path).write_bytes(_with_metadata(content, facts))
        ins = tuple(
            TensorSpec(s.name, s.shape, "int32" if s.dtype == "int64" else s.dtype, s.description)
            for s in enc.inputs
        )
        notes = {
            "fp32": [],
            "fp16": ["fp16 weights, fp32 activations (ai-edge-quantizer float casting + DEQUANTIZE)"],
            "int8": ["dynamic-range int8 weights, fp32 activations (ai-edge-quantizer dynamic_wi8_afp32)"],
            "int8-static": [
                "int8 weights and activations calibrated on the shipped photographs/captions "
                "(ai-edge-quantizer static_wi8_ai8) except the LayerNorm ops, which compute in float32, and "
                "an int8 token-embedding table with float rows (details: float32_ops); float inputs and the "
                "output are int8 tensors: quantize and dequantize with each tensor's scale and zero point"
            ],
        }[precision]
        notes.append(f"image input {layout_of(options)}; metadata JSON embedded under 'mobileclip_export'")
        return ArtifactInfo(
            path=Path(path),
            inputs=ins,
            outputs=tuple(enc.outputs),
            notes=notes,
            details={
                "signature": sig,
                "tensor_names": {
                    "inputs": [f"{sig}_{s.name}" for s in enc.inputs],
                    "outputs": [f"{sig}_{s.name}_output" for s in enc.outputs],
                },
                "metadata_name": METADATA_NAME,
                "precision": precision,
                **quant,
            },
        )

    def card_section(self, records: list[dict[str, Any]], manifest: Mapping[str, Any]) -> str | None:
        from mobileclip_export.export.backends.xnnpack.android_cards import litert_section

        return litert_section(records)

    def load(self, path: Path, options: Mapping[str, Any]) -> Runner:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as err:
            raise RuntimeUnavailable(f"ai-edge-litert cannot load here ({err}); {_PIP_HINT}") from err
        threads = options.get("num_threads") or os.cpu_count() or 1
        return wrap_runner(_LiteRTRunner(Path(path), int(threads)), options)

    def structural_checks(self, path: Path, enc: EncoderExport) -> dict[str, Any]:
        """Op census from the flatbuffer, what XNNPACK delegated (and did not), signature I/O and dtypes."""
        from ai_edge_litert.interpreter import Interpreter

        census, custom = op_census(path)
        problems = [f"custom/Flex op {name} (LiteRT builtin runtimes cannot run it)" for name in custom]
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        signatures = interp.get_signature_list()
        sig = signature_name(enc.encoder)
        if sig not in signatures:
            return {
                "op_census": census,
                "problems": problems + [f"no signature {sig!r} (has {sorted(signatures)})"],
            }
        details = interp.get_signature_runner(sig).get_input_details()
        inputs = {n: _io_entry(d) for n, d in details.items()}
        for spec in enc.inputs:
            got = inputs.get(spec.name)
            if got is None:
                problems.append(f"input {spec.name!r} missing (has {sorted(inputs)})")
                continue
            want = np.dtype(_EXPECTED_INPUT_DTYPES.get(spec.dtype, np.float32)).name
            if got["dtype"] != want and not (want == "float32" and "quantization" in got):
                problems.append(f"input {spec.name!r} is {got['dtype']}, expected {want}")
            if tuple(got["shape"]) != tuple(spec.shape):
                problems.append(f"input {spec.name!r} has shape {got['shape']}, expected {list(spec.shape)}")
        outputs = signatures[sig]["outputs"]
        problems += [
            f"output {s.name!r} missing (has {outputs})" for s in enc.outputs if s.name not in outputs
        ]
        # The default XNNPACK delegate is applied at allocate_tensors: which nodes it replaced.
        delegation = delegated_ops(interp._get_ops_details())
        metadata = read_metadata(path)
        if not metadata:
            problems.append(f"no {METADATA_NAME!r} metadata in the flatbuffer")
        return {
            "signature": sig,
            "inputs": inputs,
            "outputs": list(outputs),
            "op_census": census,
            "xnnpack_delegation": delegation,
            "metadata": metadata,
            "problems": problems,
        }

"""Core AI conversion: ``torch.export`` -> ``run_decompositions(coreai_torch.get_decomp_table())`` ->
``TorchConverter`` -> ``AIProgram.save_asset``, one entry point per encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobileclip_export.errors import ExportFailure, MissingDependencyError, install_hint
from mobileclip_export.export.spec import EncoderExport, TensorSpec

from .hazards import find_coreai_hazards

if TYPE_CHECKING:
    import torch

MAIN_ENTRYPOINT = "main"
PIP_HINT = install_hint("coreai")


def function_name(encoder: str) -> str:
    """Entry point name of an encoder inside a multi-function asset."""
    return f"encode_{encoder}"


def _import_converter() -> Any:
    try:
        import coreai_torch
    except ImportError as err:
        raise MissingDependencyError(
            f"target 'coreai' needs coreai-torch and coreai-core ({err}); install them with: {PIP_HINT}"
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

    from .forms import linears_as_convs  # torch: imported when converting, never for --help

    module = linears_as_convs(enc.module).eval()  # a copy: never mutate the caller's module
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


def convert_and_save(
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


def io_specs(enc: EncoderExport, precision: str, entrypoint: str) -> tuple[tuple[TensorSpec, ...], ...]:
    note = f" (function {entrypoint})"
    ins = tuple(
        TensorSpec(s.name, s.shape, _io_dtype(s, precision), s.description + note) for s in enc.inputs
    )
    outs = tuple(
        TensorSpec(s.name, s.shape, _io_dtype(s, precision), s.description + note) for s in enc.outputs
    )
    return ins, outs

"""Core AI structural checks: function I/O, op census and storage types from the asset summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobileclip_export.export.spec import EncoderExport

from .convert import MAIN_ENTRYPOINT, function_name


def structural_checks(path: Path, enc: EncoderExport) -> dict[str, Any]:
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

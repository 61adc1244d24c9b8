"""Traps of coreai-torch 0.4.3 that do not raise (see docs/dependencies.md), found in the exported graph so
the export fails with the reason instead of producing a wrong artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of target listing and --help (see export/target.py)
    import torch

# Ops coreai-torch 0.4.3 cannot convert (docs/dependencies.md); caught here so the message names our model.
_UNSUPPORTED_PREFIXES = ("aten.sort", "aten.argsort", "aten._fft", "aten.fft_", "aten.var", "aten.std")


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


def _input_problems(node: torch.fx.Node, spec: Any, exported_program: Any) -> list[str]:
    """A 64-bit user input, or a used int64 constant outside the int32 range it would be narrowed to."""
    import torch
    from torch.export.graph_signature import InputKind

    dtype = getattr(node.meta.get("val"), "dtype", None)
    if spec is None:
        return []
    if spec.kind == InputKind.USER_INPUT and dtype in (torch.int64, torch.float64):
        return [
            f"input {node.name!r} is {dtype}: the Core AI runtime rejects 64-bit inputs "
            "(trace token ids as int32, images as float32/float16)"
        ]
    if dtype == torch.int64 and node.users:
        tensor = exported_program.state_dict.get(spec.target, exported_program.constants.get(spec.target))
        limit = torch.iinfo(torch.int32)
        if tensor is not None and tensor.numel() and (tensor.min() < limit.min or tensor.max() > limit.max):
            return [f"int64 constant {spec.target!r} exceeds the int32 range it would be narrowed to"]
    return []


def _call_problems(node: torch.fx.Node) -> list[str]:
    """Average pooling the converter gets wrong or crashes on, and ops it does not support."""
    target = str(node.target)
    if target.startswith(_UNSUPPORTED_PREFIXES):
        return [f"{_where(node)}: {target} is not supported by coreai-torch"]
    if not target.startswith("aten.avg_pool"):
        return []
    problems = []
    args = _node_arguments(node)
    padding = args.get("padding", 0)
    padded = any(int(p) != 0 for p in (padding if isinstance(padding, (list, tuple)) else [padding]))
    if args.get("count_include_pad") is False and padded:
        problems.append(
            f"{_where(node)}: {target} with count_include_pad=False and padding {list(padding)} "
            "is converted as count_include_pad=True (silently wrong numbers)"
        )
    if args.get("ceil_mode") is True:
        problems.append(f"{_where(node)}: {target} with ceil_mode=True crashes the coreai-torch converter")
    return problems


def find_coreai_hazards(exported_program: torch.export.ExportedProgram) -> list[str]:
    """Reasons coreai-torch 0.4.3 would convert this (decomposed) program wrongly or crash; empty when safe.

    Checked: ``avg_pool2d`` with ``count_include_pad=False`` and padding (converted as if True: silently
    wrong), ``avg_pool2d`` with ``ceil_mode=True`` (converter crash), 64-bit user inputs (the runtime rejects
    them), float64 anywhere and used int64 constants outside the int32 range (narrowed silently), and ops the
    converter does not support. int64 intermediates such as ``argmax`` indices are fine: they are narrowed to
    int32 and stay in range.
    """
    import torch

    problems: list[str] = []
    specs = {s.arg.name: s for s in exported_program.graph_signature.input_specs if hasattr(s.arg, "name")}
    for node in exported_program.graph.nodes:
        if node.op == "placeholder":
            found = _input_problems(node, specs.get(node.name), exported_program)
            problems += found
            if found and found[0].startswith("input "):
                continue
        if getattr(node.meta.get("val"), "dtype", None) == torch.float64:
            problems.append(f"{_where(node)} is float64: coreai-torch narrows it to float32 silently")
        if node.op == "call_function":
            problems += _call_problems(node)
    return problems

"""Name the first MIL op whose value disagrees with its reference (PyTorch FX node or another program).

Matching: the torch.export frontend names MIL ops and vars after the FX nodes they came from (``conv2d_1``,
``layer_norm``); fp16 conversion appends ``_cast_fp16``, and some ops get a ``_0`` suffix while their output
var keeps the FX name. A MIL value is compared with an FX node only when names *and* shapes agree (up to unit
dims), so graph rewrites that reuse a name for something else are skipped rather than misreported. The model
outputs are matched by position, so a divergence of the result is always seen.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobileclip_export.export.parity import ParityStats, Tolerance, compare

from .executor import Program

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"(_cast_fp16|_cast_fp32|_to_fp16|_to_fp32)+$")


@dataclass(frozen=True)
class OpComparison:
    """One MIL value compared with its reference."""

    index: int  # position of the op in the program
    op_name: str
    op_type: str
    output: str  # MIL var name
    reference: str  # FX node name (or reference program var)
    shape: tuple[int, ...]
    stats: ParityStats
    violations: tuple[str, ...]


@dataclass(frozen=True)
class DivergenceReport:
    """The first compared op beyond tolerance, and what came before it."""

    op_name: str
    op_type: str
    output: str
    reference: str
    stats: ParityStats
    violations: tuple[str, ...]
    last_good: OpComparison | None  # the last compared op before it that was within tolerance
    n_compared: int  # comparisons made up to and including the divergent one
    n_ops: int
    comparisons: tuple[OpComparison, ...] = field(default=(), repr=False)

    def __str__(self) -> str:
        prev = (
            f"; last agreeing op: {self.last_good.op_name} ({self.last_good.op_type})"
            if self.last_good
            else ""
        )
        return (
            f"first divergence at MIL op {self.op_name!r} ({self.op_type}), output {self.output!r} vs "
            f"{self.reference!r}: {'; '.join(self.violations)} (cosine {self.stats.cosine:.6f}, "
            f"max|diff| {self.stats.max_abs_diff:.3e}){prev}"
        )


def normalize_name(name: str) -> str:
    return _SUFFIX.sub("", name)


def _default_tol(program: Program) -> Tolerance:
    from mobileclip_export.export.tolerances import tolerance_for

    fp16 = program.fp16_emulation and program.graph.uses_fp16()
    return tolerance_for("fp16" if fp16 else "fp32")


def compare_values(reference: np.ndarray, actual: np.ndarray) -> tuple[ParityStats, list[str]]:
    """Stats over one tensor (flattened to a single row). Non-finite reference entries (e.g. -inf masks) must
    be matched by a same-sign non-finite or saturated value; they are left out of the statistics."""
    ref = np.asarray(reference, np.float64).reshape(1, -1)
    act = np.asarray(actual, np.float64).reshape(1, -1)
    extra: list[str] = []
    bad_ref = ~np.isfinite(ref)
    if bad_ref.any():
        ok = (np.sign(act[bad_ref]) == np.sign(ref[bad_ref])) & (np.abs(act[bad_ref]) >= 6e4) | (
            np.isnan(ref[bad_ref]) & np.isnan(act[bad_ref])
        )
        if not ok.all():
            extra.append(f"{int((~ok).sum())} non-finite reference values not reproduced")
        keep = ~bad_ref
        ref, act = ref[keep].reshape(1, -1), act[keep].reshape(1, -1)
    if ref.size == 0:
        return compare(np.zeros((1, 1)), np.zeros((1, 1))), extra
    return compare(ref, act), extra


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _compare_all(
    program: Program, values: Mapping[str, np.ndarray], lookup: Any, tol: Tolerance, *, stop_early: bool
) -> list[OpComparison]:
    """Compare each matched float MIL value in program order (to the first violation if ``stop_early``)."""
    comps: list[OpComparison] = []
    for i, op in enumerate(program.graph.ops):
        for out in op.outputs:
            if out.dtype not in ("fp16", "fp32") or out.name not in values:
                continue
            hit = lookup(op, out.name)
            if hit is None:
                continue
            ref_name, ref = hit
            act = values[out.name]
            if _squeezed(ref.shape) != _squeezed(act.shape) or ref.size != act.size or act.size == 0:
                continue
            stats, extra = compare_values(ref, act)
            viol = tuple(extra + stats.violations(tol, final_output=False))  # intermediates may be large
            comps.append(OpComparison(i, op.name, op.type, out.name, ref_name, tuple(act.shape), stats, viol))
            if viol and stop_early:
                return comps
    return comps


def _report(program: Program, comps: list[OpComparison]) -> DivergenceReport | None:
    bad = next((k for k, c in enumerate(comps) if c.violations), None)
    if bad is None:
        log.debug("no divergence over %d compared values", len(comps))
        return None
    c = comps[bad]
    last_good = next((p for p in reversed(comps[:bad]) if not p.violations), None)
    return DivergenceReport(
        c.op_name,
        c.op_type,
        c.output,
        c.reference,
        c.stats,
        c.violations,
        last_good,
        bad + 1,
        len(program.graph.ops),
        tuple(comps[: bad + 1]),
    )


def torch_intermediates(
    torch_module: Any, example_inputs: Sequence[Any]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every tensor an FX node produces on ``example_inputs`` (by node name) and the output node names.

    The module is exported the way the Core ML backend exports it (``torch.export`` then
    ``run_decompositions({})``) so node names line up with MIL names; an ExportedProgram is used as given
    (decomposed the same way)."""
    import torch

    ep = torch_module
    if not isinstance(ep, torch.export.ExportedProgram):
        ep = torch.export.export(torch_module.eval(), tuple(example_inputs))
    ep = ep.run_decompositions({})
    gm = ep.module()
    values: dict[str, np.ndarray] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            r = super().run_node(n)
            if isinstance(r, torch.Tensor) and n.op == "call_function":
                values[n.name] = r.detach().to(torch.float64 if r.is_floating_point() else r.dtype).numpy()
            return r

    with torch.no_grad():
        _Recorder(gm).run(*example_inputs)
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = [a.name for a in out_node.args[0] if hasattr(a, "name")]
    return values, outs


def torch_comparisons(
    program: Program,
    feeds: Mapping[str, np.ndarray],
    torch_module: Any,
    example_inputs: Sequence[Any],
    tol: Tolerance | None = None,
    *,
    stop_early: bool = False,
) -> list[OpComparison]:
    """Every MIL value matched to an FX node, compared (program order); see :func:`first_divergence`."""
    tol = tol or _default_tol(program)
    ref, ref_outs = torch_intermediates(torch_module, example_inputs)
    values = program.trace(feeds)
    by_output = dict(zip(program.graph.outputs, ref_outs))

    def lookup(op: Any, var: str) -> tuple[str, np.ndarray] | None:
        if op.type == "cast":  # a cast is named after the graph input, not what it casts: compare with that
            cands = [by_output.get(var), normalize_name(str(op.inputs.get("x")))]
        else:
            cands = [by_output.get(var), var, normalize_name(var), op.name, normalize_name(op.name)]
            base = normalize_name(op.name)
            if re.search(r"_\d+$", base):
                cands.append(re.sub(r"_\d+$", "", base))
        for c in cands:
            if c and c in ref:
                return c, ref[c]
        return None

    return _compare_all(program, values, lookup, tol, stop_early=stop_early)


def first_divergence(
    program: Program,
    feeds: Mapping[str, np.ndarray],
    torch_module: Any,
    example_inputs: Sequence[Any],
    tol: Tolerance | None = None,
) -> DivergenceReport | None:
    """The first MIL op (program order) whose output differs from its PyTorch counterpart beyond ``tol``.

    Args:
        program: from :func:`load_program`; fp16 programs are compared as emulated (default tolerance: the
            coreml fp16 row of the tolerance table, else fp32).
        feeds: program inputs (images as [0, 255] pixels).
        torch_module: the module that was converted (for the image encoder: the one *without* the
            normalization folded into ImageType), or its ``ExportedProgram``.
        example_inputs: torch inputs equivalent to ``feeds`` (images in the module's own range).

    Returns None when every matched value is within tolerance.
    """
    comps = torch_comparisons(program, feeds, torch_module, example_inputs, tol, stop_early=True)
    return _report(program, comps)


def compare_programs(
    reference: Program, candidate: Program, feeds: Mapping[str, np.ndarray], tol: Tolerance | None = None
) -> DivergenceReport | None:
    """The first op of ``candidate`` whose value differs from the same-named value of ``reference`` (names
    compared without ``_cast_fp16``-style suffixes), e.g. an fp32 package vs its fp16 or a suspect build."""
    tol = tol or _default_tol(candidate)
    ref_vals = reference.trace(feeds)
    ref = {normalize_name(k): v for k, v in ref_vals.items()}
    ref.update(
        {
            f"op:{normalize_name(op.name)}": ref_vals[op.outputs[0].name]
            for op in reference.graph.ops
            if op.outputs[0].name in ref_vals
        }
    )
    ref_out = dict(zip(candidate.graph.outputs, reference.graph.outputs))

    def lookup(op: Any, var: str) -> tuple[str, np.ndarray] | None:
        if var in ref_out and ref_out[var] in ref_vals:
            return ref_out[var], ref_vals[ref_out[var]]
        keys = (normalize_name(var), f"op:{normalize_name(op.name)}")
        if op.type == "cast":
            keys = (normalize_name(str(op.inputs.get("x"))),)
        for key in keys:
            if key in ref:
                return key.removeprefix("op:"), ref[key].astype(np.float64)
        return None

    return _report(candidate, _compare_all(candidate, candidate.trace(feeds), lookup, tol, stop_early=True))

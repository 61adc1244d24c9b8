"""Resolve and validate an export request before heavy work (names, encoders, precisions, options, extras).

Everything here is cheap: no model is built and no converter is imported, so bad input fails in well under a
second with a message naming the problem and the valid choices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mobileclip_export.errors import MissingDependencyError, UnknownNameError, UsageError
from mobileclip_export.export.registry import all_targets, get_target
from mobileclip_export.export.target import Target

ENCODERS = ("image", "text")


@dataclass
class TargetPlan:
    target: Target
    precision: str
    options: dict[str, Any]
    multifunction: bool = False
    missing: str | None = None  # a MissingDependencyError message when the extra is absent (target "all")


@dataclass
class ExportPlan:
    targets: list[TargetPlan] = field(default_factory=list)
    encoders: tuple[str, ...] = ENCODERS


def resolve_encoders(encoders: str | Sequence[str]) -> tuple[str, ...]:
    items = [encoders] if isinstance(encoders, str) else list(encoders)
    out: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name in ("both", "all"):
                out.extend(ENCODERS)
            elif name in ENCODERS:
                out.append(name)
            else:
                raise UnknownNameError("encoder", name, [*ENCODERS, "both"])
    if not out:
        raise UsageError("no encoder selected; choose image, text or both")
    return tuple(e for e in ENCODERS if e in out)


def resolve_targets(targets: str | Sequence[str]) -> tuple[list[Target], bool]:
    """Target objects in registry order, and whether "all" was asked for."""
    items = [targets] if isinstance(targets, str) else list(targets)
    names: list[str] = []
    for item in items:
        names.extend(n.strip() for n in str(item).split(",") if n.strip())
    if not names:
        raise UsageError(f"no target selected; choose from: {', '.join([*all_targets(), 'all'])}")
    if any(n.lower() == "all" for n in names):
        return list(all_targets().values()), True
    chosen: dict[str, Target] = {}
    for n in names:
        t = get_target(n)
        chosen[t.name] = t
    order = list(all_targets())
    return sorted(chosen.values(), key=lambda t: order.index(t.name)), False


def _split_options(targets: list[Target], options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-target option dicts. Keys may be flat (``opset``) or nested per target (``{"<target>": {...}}``).

    A flat option must be declared by at least one chosen target (with one target: by that target), else
    it is an error naming the option and who supports it; each target receives only what it declares.
    """
    per: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    declared = {t.name: {o.name for o in t.options} for t in targets}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and key in per:
            per[key].update({k: v for k, v in value.items() if v is not None})
            continue
        if isinstance(value, Mapping):
            raise UnknownNameError("target (in options)", key, list(per))
        users = [name for name, opts in declared.items() if key in opts]
        if not users:
            flag = "--" + key.replace("_", "-")
            chosen = ", ".join(per)
            who = [name for name, t in all_targets().items() if key in {o.name for o in t.options}]
            hint = f" (it belongs to: {', '.join(who)})" if who else " (no target declares it)"
            raise UsageError(f"option {flag} is not supported by the chosen target(s) {chosen}{hint}")
        for name in users:
            per[name][key] = value
    return per


def plan_export(
    targets: str | Sequence[str],
    encoders: str | Sequence[str],
    precision: str | None,
    options: Mapping[str, Any] | None,
) -> ExportPlan:
    chosen, is_all = resolve_targets(targets)
    encs = resolve_encoders(encoders)
    per = _split_options(chosen, options or {})
    plan = ExportPlan(encoders=encs)
    for t in chosen:
        prec = precision or t.default_precision
        if is_all and precision and prec not in t.precisions:
            raise UsageError(
                f"--precision {precision} is not supported by target {t.name!r} (supported: "
                f"{', '.join(t.precisions)}); choose targets explicitly or drop --precision"
            )
        opts = t.validate(prec, per[t.name])
        multi = bool(opts.get("multifunction")) and t.supports_multifunction
        if opts.get("multifunction") and not multi:
            raise UsageError(f"target {t.name!r} does not support --multifunction")
        if multi and set(encs) != set(ENCODERS):
            if "multifunction" not in per[t.name]:  # the target's default, not asked for: one per encoder
                multi = False
            else:
                raise UsageError("--multifunction needs both encoders (--encoder both)")
        missing = None
        try:
            t.ensure_available()
        except MissingDependencyError as err:
            if not is_all:
                raise
            missing = str(err)
        plan.targets.append(TargetPlan(t, prec, opts, multi, missing))
    return plan

"""Resolve and validate an export request before heavy work (names, encoders, precisions, options, extras).

Everything here is cheap: no model is built and no converter is imported, so bad input fails in well under a
second with a message naming the problem and the valid choices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.errors import MissingDependencyError, UnknownNameError, UsageError
from mobileclip_export.export.registry import all_targets, get_target
from mobileclip_export.export.target import Target

ENCODERS = ("image", "text")
# Room for what sits inside a package artifact (an .mlpackage's Data/com.apple.CoreML/weights/weight.bin is 40
# bytes) and for the bundle's own files (golden/, app files): the deepest path the plan cannot name exactly.
INSIDE_ARTIFACT = 64
_RANDOM = "x" * 8  # tempfile.mkdtemp's random suffix


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


def _limits(path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the filesystem holding ``path``'s nearest existing ancestor (255, 4096 if
    the system does not say)."""
    probe = path
    while True:
        try:
            if probe.exists() or probe == probe.parent:
                break
        except OSError:  # ENAMETOOLONG while probing: look higher up
            pass
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such limit
        return 255, 4096


def check_output_path(output_dir: str | Path, model: str, plan: ExportPlan) -> None:
    """Refuse (UsageError naming the path) an output directory whose bundle files would exceed the
    filesystem's name or path length, before anything is created or built."""
    from mobileclip_export.export.bundle.layout import STAGING

    base = Path(os.path.abspath(output_dir))
    name_max, path_max = _limits(base)
    tmp = f".{model}.partial-{os.getpid()}-{_RANDOM}"  # BundleWriter.open's hidden build folder
    labels = (*plan.encoders, "image-text", "classifier")
    deepest = ""
    for tp in plan.targets:
        for label in labels:
            name = tp.target.artifact_name(model, label, tp.precision, tp.options)
            deepest = max(deepest, os.path.join(base, tmp, tp.target.name, STAGING, name), key=len)
    for part in Path(deepest or base).parts:
        n = len(os.fsencode(part))
        if n > name_max:
            shown = part if len(part) <= 60 else part[:57] + "..."
            raise UsageError(
                f"output path {str(output_dir)!r}: the name {shown!r} is {n} bytes, over this filesystem's "
                f"limit of {name_max} (NAME_MAX); choose a shorter --output-dir"
            )
    total = len(os.fsencode(deepest or str(base))) + INSIDE_ARTIFACT
    if total >= path_max:
        raise UsageError(
            f"output path {str(output_dir)!r} is too long: the bundle's files would reach {total} bytes, "
            "over "
            f"this filesystem's limit of {path_max} (PATH_MAX); choose a shorter --output-dir"
        )

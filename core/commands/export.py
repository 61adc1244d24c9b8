"""``mobileclip-export export`` (the default command; the dispatcher is ``mobileclip_export.cli``).

Target-specific flags are collected from every backend's ``OptionSpec`` so adding a backend adds its flags
here without editing this file. Building the parser imports only the backend modules (cheap by contract),
never a converter, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError, install_hint
from mobileclip_export.export.pipeline.lanes import parse_jobs
from mobileclip_export.export.pipeline.progress import human_bytes
from mobileclip_export.export.registry import all_targets
from mobileclip_export.export.spec import OptionSpec

PROG = "mobileclip-export"


def _option_specs() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Option name -> (first spec seen, targets declaring it)."""
    out: dict[str, tuple[OptionSpec, list[str]]] = {}
    for name, target in all_targets().items():
        for spec in target.options:
            if spec.name in out:
                out[spec.name][1].append(name)
            else:
                out[spec.name] = (spec, [name])
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``export`` subcommand's parser (its flags plus the common ones)."""
    from mobileclip_export.cli import command_parser

    return command_parser("export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    targets = all_targets()
    target_names = [*targets, "all"]
    alias_text = ", ".join(f"{a}->{n}" for n, t in targets.items() for a in t.aliases)
    p.epilog = f"example: {PROG} --model mobileclip_s0 --target {next(iter(targets))} --output-dir exports"
    p.add_argument("--model", help="model name (see --list-models), e.g. mobileclip_s0")
    p.add_argument(
        "--target",
        action="append",
        metavar="|".join(target_names),
        help=f"target(s), repeatable or comma-separated (default: all). Aliases: {alias_text or 'none'}",
    )
    p.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (.pt/.pth/.safetensors); default: random weights"
    )
    p.add_argument("--encoder", default="both", help="image | text | both (default: both)")
    p.add_argument("--precision", help="fp32 | fp16 | ... (default: each target's own default)")
    p.add_argument("--output-dir", type=Path, default=Path("exports"), help="bundle root (default: exports)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip running artifacts for parity"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and verification inputs")
    p.add_argument("--reduced", action="store_true", help="small test-size variant with the same block types")
    p.add_argument(
        "--jobs",
        type=parse_jobs,
        help="export lanes: targets converted side by side in this many processes (default: "
        "$MOBILECLIP_EXPORT_JOBS, else one per core, at most 2)",
    )
    p.add_argument(
        "--classes",
        type=Path,
        help="labels file (one per line): also export per target an image classifier with these labels "
        "baked in (outputs logits, embedding)",
    )
    p.add_argument(
        "--templates",
        help="with --classes or --eval-dir: templates averaged per label: clip, photo, none or a file "
        "(default: clip)",
    )
    _add_eval_arguments(p)
    p.add_argument("--list-models", action="store_true", help="list model names and exit")
    p.add_argument(
        "--list-targets", action="store_true", help="list targets, installed extras and pip commands"
    )
    _add_target_options(p)


def _add_target_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("target options (each applies to the targets that declare it)")
    for name, (spec, owners) in _option_specs().items():
        flag = "--" + name.replace("_", "-")
        helptext = f"{spec.help} [{', '.join(owners)}]"
        # A yes/no option is a value-less switch, whether declared type=bool or with choices (True, False).
        switch = spec.type is bool or set(spec.choices or ()) == {True, False}
        if spec.choices and not switch:
            helptext += f" (choices: {', '.join(map(str, spec.choices))})"
        if spec.default is not None and not switch:
            helptext += f" (default: {spec.default})"
        if switch:
            group.add_argument(flag, dest=f"opt_{name}", action="store_true", default=None, help=helptext)
        else:
            group.add_argument(
                flag, dest=f"opt_{name}", type=spec.type, default=None, metavar="VALUE", help=helptext
            )


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The accuracy gate on the user's own images."""
    p.add_argument(
        "--eval-dir",
        type=Path,
        help="your labelled images (one sub-folder per class, the folder name is the label): the accuracy "
        "guard measures fp32 and each compressed artifact's zero-shot top-1 on them",
    )
    p.add_argument(
        "--eval-labels",
        type=Path,
        help="with --eval-dir: a CSV of 'relative/path,label' lines instead of folder names",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="with --eval-dir: accuracy points a compressed artifact may lose against fp32 (default: 1)",
    )


def _list_models() -> str:
    from mobileclip_export.models import get_model_spec, list_models

    rows = ["name                 image     text       dim  size  params(M) img+text"]
    for name in list_models():
        s = get_model_spec(name)
        pub = s.published
        rows.append(
            f"{name:<20} {s.image_encoder:<9} {s.text_encoder:<9} {s.embed_dim:>4} {s.image_size:>5}"
            f"  {pub.params_image_m:>6.1f} + {pub.params_text_m:.1f}"
        )
    return "\n".join(rows)


def _list_targets() -> str:
    rows = []
    for name, t in all_targets().items():
        missing = t.missing_dependencies()
        state = "installed" if not missing else f"NOT installed: {install_hint(t.extra)}"
        aliases = f" (aliases: {', '.join(t.aliases)})" if t.aliases else ""
        rows.append(f"{name}{aliases}: {t.description}")
        rows.append(
            f"    extension {t.extension}; precisions {', '.join(t.precisions)} "
            f"(default {t.default_precision}); {state}"
        )
        for o in t.options:
            rows.append(f"    --{o.name.replace('_', '-')}: {o.help}")
    return "\n".join(rows)


def summary_table(result: Any) -> str:
    head = (
        f"{'target':<11} {'encoder':<10} {'prec':<5} {'status':<11} {'size':>9} {'cosine':>10} "
        f"{'max|diff|':>10} {'export s':>8} {'verify s':>8}  path / reason"
    )
    lines = [head, "-" * len(head)]
    for a in result.artifacts:
        cos = a.parity.get("cosine")
        mad = a.parity.get("max_abs_diff")
        status = a.status
        tail = a.path or (a.error or "")
        if a.status == "unverified":
            tail = f"{a.path}  ({a.parity.get('status')})"
        cos_s = f"{cos:.7f}" if cos is not None else "-"
        mad_s = f"{mad:.2e}" if mad is not None else "-"
        lines.append(
            f"{a.target:<11} {a.encoder:<10} {a.precision:<5} {status:<11} {human_bytes(a.bytes):>9} "
            f"{cos_s:>10} {mad_s:>10} "
            f"{a.seconds.get('export', 0):>8.1f} {a.seconds.get('verify', 0):>8.1f}  {tail}"
        )
    return "\n".join(lines)


def _options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def run(args: argparse.Namespace) -> int:
    if args.list_models:
        print(_list_models())
        return 0
    if args.list_targets:
        print(_list_targets())
        return 0
    if not args.model:
        from mobileclip_export.models import list_models

        raise UsageError(f"--model is required; choose one of: {', '.join(list_models())}")

    from mobileclip_export.export.pipeline.api import export_model
    from mobileclip_export.export.pipeline.progress import StderrProgress
    from mobileclip_export.stdio import stdout_to_stderr

    classifier = _classifier_args(args)  # bad --classes/--templates fail before any heavy work
    evaluation = _evaluation_args(args)
    with stdout_to_stderr():  # converters print to stdout, even from C++; stdout is kept for --json
        result = export_model(
            args.model,
            args.target or "all",
            checkpoint=args.checkpoint,
            encoders=args.encoder,
            precision=args.precision,
            output_dir=args.output_dir,
            force=args.force,
            verify=args.verify,
            options=_options_from_args(args),
            reduced=args.reduced,
            seed=args.seed,
            jobs=args.jobs,
            progress=StderrProgress() if args.verbosity >= 0 else None,
            **classifier,
            **evaluation,
        )
    _print_summary(result, args)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.ok else 1


def _classifier_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.classes is None:
        if args.templates is not None and args.eval_dir is None:
            raise UsageError("--templates applies to --classes or --eval-dir (the labels prompted)")
        return {}
    from mobileclip_export.export.pipeline.classifier import read_classes

    return {"classes": read_classes(args.classes), "templates": args.templates}


def _evaluation_args(args: argparse.Namespace) -> dict[str, Any]:
    """--eval-dir read and checked (files, classes, prompts) before any heavy work."""
    if args.eval_dir is None:
        if args.eval_labels is not None or args.max_accuracy_drop is not None:
            raise UsageError("--eval-labels and --max-accuracy-drop apply to --eval-dir")
        return {}
    from mobileclip_export.export.compression.evalset import DEFAULT_MAX_DROP, eval_request

    drop = DEFAULT_MAX_DROP if args.max_accuracy_drop is None else args.max_accuracy_drop
    return {"evaluation": eval_request(args.eval_dir, args.eval_labels, args.templates, drop)}


def _print_summary(result: Any, args: argparse.Namespace) -> None:
    """The human summary goes to stderr (stdout is kept for --json); -q keeps only the failures."""
    err = sys.stderr
    if args.verbosity >= 0:
        print("\n" + summary_table(result), file=err)
    for a in result.artifacts:
        if a.status == "failed":
            print(f"FAILED {a.target} {a.encoder} {a.precision}: {a.error}", file=err)
    if args.verbosity < 0:
        return
    if result.random_init:
        print(
            "\nNOTE: random weights; artifacts are valid for size and latency only, NOT for accuracy.",
            file=err,
        )
    if result.bundle_dir:
        print(f"\nbundle: {result.bundle_dir}  (manifest: {result.manifest_path})", file=err)
        print(f"next:   {PROG} bench --model {args.model} --bundle-dir {args.output_dir}", file=err)
    else:
        print("\nno artifact succeeded; nothing was written", file=err)


def main(argv: Sequence[str] | None = None) -> int:
    """The whole ``mobileclip-export`` command (kept for callers of the pre-subcommand entry point)."""
    from mobileclip_export.cli import main as cli_main

    return cli_main(argv)

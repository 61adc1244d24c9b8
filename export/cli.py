"""``mobileclip-export``: export (default command) and ``bench`` (delegated to the benchmarks CLI).

Target-specific flags are collected from every backend's ``OptionSpec`` so adding a backend adds its flags
here without editing this file. Building the parser imports only the backend modules (cheap by contract),
never a converter, so ``--help`` stays fast.

Exit codes: 0 ok, 1 an export or verification failed, 2 bad input (unknown name, bad flag, unwritable path,
existing bundle without --force, missing extra for an explicit target, bad checkpoint), 130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mobileclip_export import __version__
from mobileclip_export.errors import MobileClipExportError, UsageError
from mobileclip_export.export.progress import human_bytes
from mobileclip_export.export.registry import all_targets
from mobileclip_export.export.target import OptionSpec

PROG = "mobileclip-export"


class _Parser(argparse.ArgumentParser):
    """argparse with exit 2 and a 'did you mean' for unknown flags."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments" in message:
            flags = [s for a in self._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=3)
                if close:
                    message += f" (did you mean {' or '.join(close)}?)"
            message += f"; valid flags: {' '.join(sorted(f for f in flags if f.startswith('--')))}"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    targets = all_targets()
    target_names = [*targets, "all"]
    alias_text = ", ".join(f"{a}->{n}" for n, t in targets.items() for a in t.aliases)
    p = _Parser(
        prog=PROG,
        allow_abbrev=False,  # a new backend's flag must never turn an abbreviation ambiguous
        description="Export MobileCLIP encoders to verified on-device artifacts "
        "(`mobileclip-export bench --help` for benchmarks).",
        epilog=f"example: {PROG} --model mobileclip_s0 --target {next(iter(targets))} --output-dir exports",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    p.add_argument("--list-models", action="store_true", help="list model names and exit")
    p.add_argument(
        "--list-targets", action="store_true", help="list targets, installed extras and pip commands"
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    group = p.add_argument_group("target options (each applies to the targets that declare it)")
    for name, (spec, owners) in _option_specs().items():
        flag = "--" + name.replace("_", "-")
        helptext = f"{spec.help} [{', '.join(owners)}]"
        if spec.choices:
            helptext += f" (choices: {', '.join(map(str, spec.choices))})"
        if spec.default is not None and spec.type is not bool:
            helptext += f" (default: {spec.default})"
        if spec.type is bool:
            group.add_argument(flag, dest=f"opt_{name}", action="store_true", default=None, help=helptext)
        else:
            group.add_argument(
                flag, dest=f"opt_{name}", type=spec.type, default=None, metavar="VALUE", help=helptext
            )
    return p


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
        state = "installed" if not missing else f"NOT installed: pip install 'mobileclip-export[{t.extra}]'"
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


def _setup_logging(verbosity: int) -> None:
    """Our warnings always show; converters' own chatter (and their tqdm bars) only with -v/-vv."""
    ours = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    others = logging.ERROR if verbosity == 0 else ours
    logging.basicConfig(level=others, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mobileclip_export").setLevel(ours)
    if verbosity == 0:
        os.environ.setdefault("TQDM_DISABLE", "1")  # our StderrProgress replaces converters' progress bars


def _export(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.list_models:
        print(_list_models())
        return 0
    if args.list_targets:
        print(_list_targets())
        return 0
    if not args.model:
        from mobileclip_export.models import list_models

        parser.error(f"--model is required; choose one of: {', '.join(list_models())}")
    _setup_logging(args.verbose)

    from mobileclip_export.export.api import export_model
    from mobileclip_export.export.progress import StderrProgress

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
        progress=StderrProgress(),
    )
    err = sys.stderr
    print("\n" + summary_table(result), file=err)
    for a in result.artifacts:
        if a.status == "failed":
            print(f"FAILED {a.target} {a.encoder} {a.precision}: {a.error}", file=err)
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
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.ok else 1


def _json_error(argv: Sequence[str], err: Exception, code: int) -> None:
    """With --json, a machine reader still gets one JSON document on stdout when the run fails early."""
    if "--json" in argv:
        print(
            json.dumps({"ok": False, "error": str(err), "error_type": type(err).__name__, "exit_code": code})
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            try:
                from mobileclip_export.benchmarks.cli import main as bench_main
            except ImportError as err:
                raise UsageError(f"the benchmarks CLI is not available in this install: {err}") from err
            return int(bench_main(argv[1:]) or 0)
        if argv and argv[0] == "export":
            argv = argv[1:]
        return _export(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        _json_error(argv, err, 2)
        return 2
    except MobileClipExportError as err:
        print(f"{PROG}: failed: {err}", file=sys.stderr)
        _json_error(argv, err, err.exit_code)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; no partial artifact was left in the bundle", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``mobileclip-export matrix``: every (model, target, precision, encoder) cell, resumable, one report.

Exit codes: 0 every cell verified (or reused), 1 a cell failed (each named on stderr with its reason),
2 bad input (unknown model/target/precision, missing extra, --ray without Ray, output folder in use).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from mobileclip_export.errors import UsageError


def _csv(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option wants NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    return name.strip().replace("-", "_"), value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("example: mobileclip-export matrix --models mobileclip_s0,mobileclip_s2 --targets all "
                "--precisions default,fp16 --output-dir matrix-out --jobs 2")
    p.add_argument("--models", action="append", help="model names, comma-separated or repeated")
    p.add_argument("--targets", action="append", help="targets, comma-separated or repeated, or 'all'")
    p.add_argument("--precisions", action="append",
                   help="precisions (default: each target's default); a precision a target lacks is skipped")
    p.add_argument("--encoders", action="append", help="image, text or both (default: both)")
    p.add_argument(
        "--checkpoint-dir", type=Path, help="holds {model}.safetensors|.pt|.pth (else: random weights)"
    )
    p.add_argument("--output-dir", type=Path, help="store (cells/), bundles/ and matrix.md/.json/.png")
    p.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                   help="run on a Ray cluster (default address: auto) instead of the local pool")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: CPU count)")
    p.add_argument(
        "--max-attempts", type=int, default=3, help="tries per cell when its worker dies (default 3)"
    )
    p.add_argument("--option", type=_option, action="append", default=[], metavar="NAME=VALUE",
                   help="a target option (as the export command's --NAME flag), repeatable")
    p.add_argument("--reduced", action="store_true", help="reduced-size models (tests / smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default: 0)")
    p.add_argument("--merge", type=Path, action="extend", nargs="+", metavar="DIR",
                   help="merge these matrix output folders (e.g. one per CI job) instead of running")
    p.add_argument("--dry-run", action="store_true", help="print the plan (estimates, reuse) and stop")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _request(args: argparse.Namespace) -> Any:
    from mobileclip_export.matrix import MatrixRequest

    if not args.targets:
        raise UsageError("--targets is required (comma-separated target names, or 'all')")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.max_attempts < 1:
        raise UsageError(f"--max-attempts must be at least 1, got {args.max_attempts}")
    return MatrixRequest(
        models=_csv(args.models),
        targets=_csv(args.targets),
        precisions=_csv(args.precisions) or ("default",),
        encoders=_csv(args.encoders) or ("image", "text"), checkpoint_dir=args.checkpoint_dir,
        options=dict(args.option), reduced=args.reduced, seed=args.seed,
    )


def _print_plan(cells: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": True, "plan": cells}))
        return 0
    for c in cells:
        reuse = "reuse" if c["reuse"] else "run"
        est = f"~{c['memory_gb']:.1f} GB  ~{c['seconds']:.0f} s"
        print(f"{c['cell']:<60} {c['mparams']:>8.2f} M  {est}  {reuse}")
    todo = [c for c in cells if not c["reuse"]]
    print(f"{len(cells)} cells, {len(todo)} to run, ~{sum(c['seconds'] for c in todo):.0f} s of work")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a SIGTERM'd coordinator (CI cancel, preemption) stops its workers first


def run(args: argparse.Namespace) -> int:
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, old)


def _run(args: argparse.Namespace) -> int:
    from mobileclip_export.matrix.run import dry_run, merge_matrix_outputs, run_matrix

    if args.output_dir is None:
        raise UsageError("--output-dir is required")
    if args.dry_run:
        return _print_plan(dry_run(_request(args), args.output_dir), args.json)
    if args.merge:
        outcome = merge_matrix_outputs(args.merge, args.output_dir)
    else:
        outcome = run_matrix(_request(args), args.output_dir, workers=args.jobs, ray_address=args.ray,
                             max_attempts=args.max_attempts)
    if args.json:
        print(json.dumps({"ok": outcome.ok, "summary": outcome.summary, "rows": outcome.rows}, default=str))
    else:
        print(outcome.reports["md"].read_text("utf-8"))
    for row in outcome.failed:
        print(f"FAILED {row['cell']}: {row['error']}", file=sys.stderr)
    return 0 if outcome.ok else 1

"""The settings of one benchmark run: parsed and validated once, then frozen."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mobileclip_export.errors import UsageError

FAST_RUNS, FAST_WARMUP = 10, 2  # --fast (CI smoke runs)
DEFAULT_GATE_PCT = 10.0  # --baseline without --fail-on-regression


@dataclass(frozen=True)
class BenchConfig:
    model: str
    targets: tuple[str, ...]
    encoders: tuple[str, ...]
    precision: str | None
    threads: int
    runs: int
    warmup: int
    reference_runs: int
    output_dir: Path
    bundle_dir: Path | None
    checkpoint: str | None
    seed: int
    reduced: bool
    baseline: Path | None
    fail_on_regression: float | None
    history: Path
    plots: bool
    estimates: bool
    device: str
    serial: str | None
    device_tools: tuple[Path, ...]
    json: bool
    verbosity: int
    profile: bool = False
    reference_onnx: tuple[Path, ...] = ()  # plain ONNX exports of the reference, timed beside ours
    batch_sizes: tuple[int, ...] = ()  # --batch-sizes: the throughput stage (benchmarks/throughput.py)

    def replace(self, **changes: object) -> BenchConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_counts(runs: int, warmup: int, reference_runs: int, threads: int) -> None:
    for flag, value, least in (
        ("--runs", runs, 1),
        ("--warmup", warmup, 0),
        ("--reference-runs", reference_runs, 1),
        ("--threads", threads, 1),
    ):
        if value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Validate the flags (cheap: names are resolved against the registries, nothing heavy is imported)."""
    from mobileclip_export.benchmarks.throughput import parse_batch_sizes
    from mobileclip_export.export.pipeline.plan import resolve_encoders, resolve_targets
    from mobileclip_export.models import get_model_spec

    runs, warmup = (FAST_RUNS, FAST_WARMUP) if args.fast else (args.runs, args.warmup)
    _check_counts(runs, warmup, args.reference_runs, args.threads)
    if args.fail_on_regression is not None and args.baseline is None:
        raise UsageError("--fail-on-regression needs --baseline FILE")
    gate = args.fail_on_regression
    if args.baseline is not None and gate is None:
        gate = DEFAULT_GATE_PCT
    get_model_spec(args.model)  # an unknown model is named here, with the valid choices
    targets, _ = resolve_targets(args.target or "all")
    return BenchConfig(
        model=args.model,
        targets=tuple(t.name for t in targets),
        encoders=resolve_encoders(args.encoder),
        precision=args.precision,
        threads=args.threads,
        runs=runs,
        warmup=warmup,
        reference_runs=args.reference_runs,
        output_dir=args.output_dir,
        bundle_dir=args.bundle_dir,
        checkpoint=args.checkpoint,
        seed=args.seed,
        reduced=args.reduced,
        baseline=args.baseline,
        fail_on_regression=gate,
        history=args.history or args.output_dir / "history.jsonl",
        plots=not args.no_plots,
        estimates=not args.no_estimates,
        device=args.device,
        serial=args.serial,
        device_tools=tuple(args.device_tool or ()),
        json=args.json,
        verbosity=getattr(args, "verbosity", 0),
        profile=getattr(args, "profile", False),
        reference_onnx=tuple(getattr(args, "reference_onnx", None) or ()),
        batch_sizes=parse_batch_sizes(getattr(args, "batch_sizes", None)),
    )

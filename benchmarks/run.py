"""One ``bench`` run: export (or reuse) a bundle, time every artifact that runs here, report.

A run is a list of stages (``_bench``): resolve the bundle, build the PyTorch baselines, collect candidates,
time them interleaved (with the GEMM peak), turn measurements into report rows, add device rows and
estimates, write the report. The flags become a frozen ``BenchConfig`` first; every row is a ``ReportRow``.

Exit codes: 0 ok (a warning when no artifact could be timed here), 1 regression gate failed, 2 usage error,
130 interrupted.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobileclip_export.benchmarks import harness as H
from mobileclip_export.benchmarks import regression, report
from mobileclip_export.benchmarks.artifacts import Bundle, artifact_path, export_bundles, read_bundle
from mobileclip_export.benchmarks.config import BenchConfig
from mobileclip_export.benchmarks.rows import ReportRow
from mobileclip_export.errors import UsageError, install_hint

log = logging.getLogger(__name__)
PROG = "mobileclip-export bench"


def run_bench(config: BenchConfig) -> int:
    """One benchmark run from its validated configuration; returns the exit code."""
    from mobileclip_export.benchmarks.machine import describe_host
    from mobileclip_export.stdio import stdout_to_stderr

    host = describe_host(config.threads)  # before pinning: the machine's cores, not the pinned subset
    before, cores = pin_cores(config.threads)
    # The collection before each candidate (harness.RssPeakSampler) then scans only what candidates made,
    # not every object the process already held (0.5 s per candidate in a process that has exported).
    gc.collect()
    gc.freeze()
    try:
        with stdout_to_stderr():  # converters and runtimes print to stdout; it is kept for the report
            outcome = _bench(config, host.to_dict(), cores)
    finally:
        gc.unfreeze()
        if before is not None:
            _set_affinity(before)
    return _emit(config, outcome)


@dataclass
class _Outcome:
    doc: dict[str, Any]
    markdown: str
    written: list[Path]
    gate: regression.GateResult | None


@dataclass
class _TorchSide:
    """The PyTorch eager baselines and what the rows need from the model."""

    random_init: bool
    data: dict[str, Any]  # encoder -> input array
    macs: dict[str, Any]  # encoder -> macs.MacReport of the reparameterized encoder
    candidates: list[H.Candidate]
    modules: dict[str, Any] = field(default_factory=dict)  # encoder -> the reparameterized encoder


def _bench(config: BenchConfig, device: dict[str, Any], cores: list[int]) -> _Outcome:
    """The stages of one benchmark run."""
    import torch

    from mobileclip_export.benchmarks import reference_export
    from mobileclip_export.benchmarks.candidates import artifact_candidates
    from mobileclip_export.benchmarks.peak import gemm_candidates, peak_from
    from mobileclip_export.benchmarks.rows import host_rows, ratios

    baseline = regression.load_baseline(config.baseline) if config.baseline else None  # fail fast
    references = reference_export.resolve(config.reference_onnx)  # fail fast: before any export
    torch.set_num_threads(config.threads)
    make_output_dir(config.output_dir)
    progress = _progress(config)
    device_runner = _device_runner(config)  # fail fast: no device attached means no heavy work
    bundle, config = _resolve_bundle(config, progress)
    side = _torch_side(config)
    candidates, failed = artifact_candidates(bundle, config, side.data)
    plain = reference_export.candidates(references, side.data, config.encoders, config.threads)
    results = H.measure(
        [*side.candidates, *plain, *candidates, *gemm_candidates(config.threads)],
        runs=config.runs,
        warmup=config.warmup,
        reference_runs=config.reference_runs,
        progress=progress,
    )
    peak = peak_from(results)
    rows = host_rows(results, side.macs, peak.gflops) + failed
    H.release(results)
    throughput = _throughput_stage(bundle, config, side) if config.batch_sizes else None
    rows += _external_rows(bundle, config, side, results, peak.gflops)
    _target_fields(rows)
    if device_runner is not None:
        rows += _device_rows(device_runner, bundle, config)
    estimates = _estimates(config, rows, side.macs, peak.gflops) if config.estimates else []
    model = {"name": config.model, "random_init": side.random_init, "reduced": config.reduced}
    settings = {**_settings(config, cores, bundle), **peak.to_settings()}
    doc = report.build_document(
        model={**model, "seed": config.seed},
        device=device,
        settings=settings,
        rows=[r.to_dict() for r in rows],
        estimates=estimates,
    )
    doc["ratios"] = ratios(doc["rows"], reference_export.REFERENCE_EXPORT)
    if throughput is not None:
        doc["throughput"], doc["settings"]["throughput"] = throughput
    markdown, written = _write_report(config, doc)
    if config.profile:
        markdown, written = _profile_stage(config, bundle, side.data, markdown, written)
    gate = regression.compare(baseline, doc, config.fail_on_regression) if baseline is not None else None
    return _Outcome(doc, markdown, written, gate)


def _external_rows(
    bundle: Bundle, config: BenchConfig, side: _TorchSide, results: list[Any], peak: float
) -> list[ReportRow]:
    """Timings a target takes outside this process (e.g. a browser), after the interleaved runs."""
    from mobileclip_export.benchmarks.artifacts import parse_precisions
    from mobileclip_export.benchmarks.candidates import select
    from mobileclip_export.benchmarks.rows import external_rows
    from mobileclip_export.export.registry import get_target

    rows: list[ReportRow] = []
    inputs = {e: side.data[e] for e in config.encoders}
    precs = parse_precisions(config.precision)
    for rec in select(bundle, config.targets, config.encoders, config.precision, multi=True):
        if rec.get("status") == "failed" or not rec.get("path"):
            continue
        target = get_target(rec["target"])
        path = artifact_path(bundle, rec)
        timings = target.bench_external(path, rec, inputs, config.runs, config.threads, precs)
        got = external_rows(target.name, timings, results, side.macs, peak)
        keys = {(r.target, r.encoder, r.precision, r.variant) for r in rows}
        rows += [r for r in got if (r.target, r.encoder, r.precision, r.variant) not in keys]
    return rows


def _target_fields(rows: list[ReportRow]) -> None:
    """Each target's own fields for its rows (``Target.bench_fields``: e.g. its ecosystem's names)."""
    from mobileclip_export.export.registry import all_targets, get_target

    known = set(all_targets())
    for row in rows:
        if row.target in known and row.record_kind == "host":
            fields = get_target(row.target).bench_fields(row.to_dict())
            if fields:
                row.extra = fields


def _profile_stage(
    config: BenchConfig, bundle: Bundle, data: dict[str, Any], markdown: str, written: list[Path]
) -> tuple[str, list[Path]]:
    """Per-operator profiles after the timed runs; the table is appended to report.md."""
    from mobileclip_export.benchmarks import profile

    profiles = profile.profile_artifacts(bundle, config, data)
    markdown = markdown + "\n\n" + profile.markdown(profiles)
    (config.output_dir / "report.md").write_text(markdown, encoding="utf-8")
    return markdown, [*written, profile.write(profiles, config.output_dir)]


def make_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output directory {str(path)!r}: {err.strerror or err}") from err


def _progress(config: BenchConfig) -> Any:
    from mobileclip_export.export.pipeline.progress import StderrProgress

    return StderrProgress() if config.verbosity >= 0 else None


def _device_runner(config: BenchConfig) -> Any:
    if config.device == "host":
        return None
    from mobileclip_export.benchmarks.devices import get_runner

    runner = get_runner(config.device, serial=config.serial)
    info = runner.check()  # raises DeviceUnavailable with the reason
    log.info("device: %s", info)
    return runner


def _resolve_bundle(config: BenchConfig, progress: Any) -> tuple[Bundle, BenchConfig]:
    """The bundle to time, and the config updated with how it was exported (size, seed, checkpoint)."""
    if config.bundle_dir is not None:
        bundle = read_bundle(config.bundle_dir, config.model)
        exported = bool(bundle.export_args.get("reduced", False))
        if config.reduced and not exported:
            raise UsageError(f"--reduced given, but the bundle in {bundle.bundle_dir} was exported full size")
        random_init = bundle.random_init and bundle.weights.get("random_init", True)
        if not random_init and config.checkpoint is None:
            # the manifest names the checkpoint it came from, but only the user chooses what we read
            raise UsageError(
                f"the bundle in {bundle.bundle_dir} was exported from checkpoint "
                f"{bundle.weights.get('checkpoint')!r}; pass --checkpoint PATH (the PyTorch reference)"
            )
        return bundle, config.replace(reduced=exported, seed=int(bundle.export_args.get("seed", config.seed)))
    bundle = export_bundles(
        config.model,
        list(config.targets),
        config.encoders,
        config.precision,
        config.output_dir / "exports",
        reduced=config.reduced,
        seed=config.seed,
        checkpoint=config.checkpoint,
        progress=progress,
        options=_batch_options(config),
    )
    return bundle, config


def _batch_options(config: BenchConfig) -> dict[str, Any] | None:
    """With --batch-sizes, a fresh export asks each target that offers it for a dynamic batch, else for the
    sizes enumerated (targets with only a fixed batch keep batch 1; give one via --bundle-dir)."""
    from mobileclip_export.export.registry import get_target

    if not config.batch_sizes:
        return None
    per: dict[str, Any] = {}
    for name in config.targets:
        declared = {o.name for o in get_target(name).options}
        if "dynamic_batch" in declared:
            per[name] = {"dynamic_batch": True}
        elif "batch_sizes" in declared:
            per[name] = {"batch_sizes": ",".join(map(str, config.batch_sizes))}
    return per or None


def _torch_side(config: BenchConfig) -> _TorchSide:
    import torch

    from mobileclip_export.benchmarks.candidates import bench_inputs, torch_candidate
    from mobileclip_export.benchmarks.macs import count_macs, weight_bytes
    from mobileclip_export.benchmarks.rows import REPARAM, TRAIN
    from mobileclip_export.reparam import create_model, reparameterize_model

    model = create_model(config.model, config.checkpoint, seed=config.seed, reduced=config.reduced).eval()
    reparam = reparameterize_model(model).eval()
    data = bench_inputs(model, config.seed)
    side = _TorchSide(bool(getattr(model, "random_init", True)), data, {}, [])
    for enc in config.encoders:
        train_enc, rep_enc = getattr(model, f"{enc}_encoder"), getattr(reparam, f"{enc}_encoder")
        side.macs[enc] = count_macs(rep_enc, (torch.from_numpy(data[enc]),))
        train_bytes = weight_bytes(train_enc)[0]
        side.candidates.append(torch_candidate(TRAIN, enc, train_enc, data[enc], train_bytes))
        side.candidates.append(torch_candidate(REPARAM, enc, rep_enc, data[enc], side.macs[enc].param_bytes))
        side.modules[enc] = rep_enc
    return side


def _throughput_stage(
    bundle: Bundle, config: BenchConfig, side: _TorchSide
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``--batch-sizes``: every artifact and the reparameterized PyTorch model at each batch size."""
    from mobileclip_export.benchmarks import throughput as T
    from mobileclip_export.benchmarks.candidates import THREAD_OPTION_NAMES, select, throughput_inputs
    from mobileclip_export.benchmarks.rows import REPARAM

    subjects = [T.torch_subject(REPARAM, e, side.modules[e]) for e in config.encoders]
    for rec in select(bundle, config.targets, config.encoders, config.precision):
        if rec.get("status") != "failed" and rec.get("path"):
            path = artifact_path(bundle, rec)
            subjects.append(T.artifact_subject(rec, path, config.threads, THREAD_OPTION_NAMES))
    inputs = throughput_inputs(side.data, max(config.batch_sizes), config.seed)
    rows = T.measure(subjects, inputs, config.batch_sizes, config.runs, config.warmup)
    return rows, T.settings(config.batch_sizes, config.runs)


def _device_rows(runner: Any, bundle: Bundle, config: BenchConfig) -> list[ReportRow]:
    from mobileclip_export.benchmarks.candidates import select
    from mobileclip_export.benchmarks.devices import DeviceJob

    tools = {p.name: p for p in config.device_tools}
    rows = []
    for rec in select(bundle, config.targets, config.encoders, config.precision):
        if rec.get("status") == "failed" or not rec.get("path"):
            continue
        path = artifact_path(bundle, rec)
        tool_name = runner.tool_for(path)
        if tool_name is None:
            continue
        job = DeviceJob(
            artifact=path,
            target=rec["target"],
            encoder=rec["encoder"],
            precision=rec["precision"],
            runs=config.runs,
            warmup=config.warmup,
            threads=config.threads,
            tool=tools.get(tool_name),
        )
        rows.append(runner.run(job).as_row())
    return rows


def _estimates(
    config: BenchConfig, rows: list[ReportRow], macs: dict[str, Any], peak: float
) -> list[dict[str, Any]]:
    from mobileclip_export.benchmarks import estimate as E

    out: list[dict[str, Any]] = []
    ane = E.AneModel()
    for enc in config.encoders:
        mr = macs[enc]
        conv = sum(v for k, v in mr.by_op.items() if "conv" in k)
        matmul_share = 1 - conv / mr.macs if mr.macs else 0.0
        out.append(vars(E.estimate_ane(enc, mr.gmacs, matmul_share, mr.streamed_param_bytes / 4 / 1e6, ane)))
        deployed = [r for r in rows if r.encoder == enc and r.kind == H.DEPLOYMENT and r.median_ms]
        if not deployed:
            continue
        # The phone runs XNNPACK: prefer host runtimes whose label says they use it, else the fastest.
        xnn = [r for r in deployed if "xnnpack" in r.runtime.lower()]
        best = min(xnn or deployed, key=lambda r: r.median_ms or 0.0)
        est = vars(E.estimate_android(enc, best.median_ms or 0.0, peak))
        est["method"] += f"; host runtime: {best.target} {best.precision}, {config.threads} thread(s)"
        out.append(est)
    return out


def _settings(config: BenchConfig, cores: list[int], bundle: Bundle) -> dict[str, Any]:
    return {
        "runs": config.runs,
        "warmup": config.warmup,
        "threads": config.threads,
        "interleaved": True,
        "reference_runs": min(config.runs, config.reference_runs),
        "pinned_cores": cores,
        "bundle_dir": str(bundle.bundle_dir),
        "reference_onnx": [str(p) for p in config.reference_onnx],
    }


def _write_report(config: BenchConfig, doc: dict[str, Any]) -> tuple[str, list[Path]]:
    out = config.output_dir
    report.write_json(out / "report.json", doc)
    md = report.markdown(doc)
    (out / "report.md").write_text(md, encoding="utf-8")
    report.append_history(config.history, doc)
    written = [out / "report.json", out / "report.md"]
    if config.plots:
        try:
            written += report.plots(doc, out)
        except ImportError as err:
            log.warning("plots skipped: %s (%s)", err, install_hint("bench"))
    return md, written


def _emit(config: BenchConfig, outcome: _Outcome) -> int:
    """Markdown (and the gate) for people; with --json, stdout holds only the JSON document."""
    human = sys.stderr if config.json or config.verbosity < 0 else sys.stdout
    print(outcome.markdown, file=human)
    print("wrote: " + ", ".join(str(p) for p in outcome.written), file=human)
    doc, gate = outcome.doc, outcome.gate
    if not any(r["latency"] for r in doc["rows"] if r["kind"] != H.BASELINE):
        print("warning: no artifact could be timed on this machine", file=sys.stderr)
    if gate is not None:
        print("\n".join(gate.lines()), file=human)
        doc = {**doc, "regression": {"passed": gate.passed, "gated": gate.gated, "lines": gate.lines()}}
    if config.json:
        print(json.dumps(doc, indent=2, default=str))
    return 1 if gate is not None and not gate.passed else 0


def _set_affinity(cores: set[int]) -> None:
    """Every thread of this process (pools already started included), so runtimes inherit the same cores."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # a thread that exited meanwhile
            pass


def pin_cores(threads: int) -> tuple[set[int] | None, list[int]]:
    """Confine the process to ``threads`` cores (Linux); returns (previous affinity, pinned cores)."""
    if not hasattr(os, "sched_setaffinity"):
        return None, []
    before = os.sched_getaffinity(0)
    if threads > len(before):
        raise UsageError(f"--threads {threads} exceeds the {len(before)} cores this process may use")
    cores = sorted(before)[:threads]
    _set_affinity(set(cores))
    return before, cores

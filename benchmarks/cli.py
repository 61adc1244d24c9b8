"""``mobileclip-export bench``: export (or reuse) a bundle, time every artifact that runs here, report.

Exit codes: 0 ok (a warning when no artifact could be timed here), 1 regression gate failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobileclip_export.benchmarks import estimate as E
from mobileclip_export.benchmarks import harness as H
from mobileclip_export.benchmarks import regression, report
from mobileclip_export.benchmarks.artifacts import Bundle, export_bundle, read_bundle
from mobileclip_export.errors import UsageError

log = logging.getLogger(__name__)
PROG = "mobileclip-export bench"
ENCODERS = ("image", "text")
THREAD_OPTION_NAMES = ("threads", "num_threads", "intra_op_num_threads")


def build_parser() -> argparse.ArgumentParser:
    """The ``bench`` subcommand's parser (its flags plus the common ones)."""
    from mobileclip_export.cli import command_parser

    return command_parser("bench")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name, e.g. mobileclip_s0")
    p.add_argument(
        "--target",
        action="append",
        default=None,
        help="target(s) to benchmark, comma-separated or repeated (default: all)",
    )
    p.add_argument("--precision", default=None, help="precision (default: each target's default)")
    p.add_argument("--encoder", default="both", help="image, text or both (default: both)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every runtime (default: 1)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per candidate (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per candidate (default: 5)")
    p.add_argument(
        "--reference-runs",
        type=int,
        default=1,
        help="timed runs for reference runtimes (emulators, often 100x slower; listed, never compared; "
        "default: 1)",
    )
    p.add_argument("--fast", action="store_true", help="short run for CI: --runs 10 --warmup 2")
    p.add_argument("--output-dir", type=Path, default=Path("bench-out"), help="where reports go")
    p.add_argument(
        "--bundle-dir",
        type=Path,
        default=None,
        help="reuse an exported bundle (dir holding manifest.json, or its parent) instead of exporting",
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint for a fresh export (default: random weights)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs (default: 0)")
    p.add_argument("--reduced", action="store_true", help="reduced-size model (tests / smoke runs)")
    p.add_argument("--baseline", type=Path, default=None, help="earlier report.json to compare against")
    p.add_argument(
        "--fail-on-regression",
        type=float,
        default=None,
        metavar="PCT",
        help="with --baseline: exit 1 when any median latency is more than PCT %% slower",
    )
    p.add_argument(
        "--history",
        type=Path,
        default=None,
        help="JSONL file to append this run to (default: OUTPUT_DIR/history.jsonl)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-estimates", action="store_true", help="skip the device estimates")
    p.add_argument(
        "--device",
        choices=("host", "android", "ios"),
        default="host",
        help="also time the artifacts on an attached device (android: adb; ios: from a Mac)",
    )
    p.add_argument("--serial", default=None, help="adb serial when several Android devices are attached")
    p.add_argument(
        "--device-tool",
        type=Path,
        action="append",
        default=None,
        help="local benchmark_model / executor_runner binary to push (repeatable)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the report as JSON on stdout (Markdown: stderr)"
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.fast:
        args.runs, args.warmup = 10, 2
    if args.runs < 1:
        raise UsageError(f"--runs must be >= 1, got {args.runs}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.reference_runs < 1:
        raise UsageError(f"--reference-runs must be >= 1, got {args.reference_runs}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.fail_on_regression is not None and args.baseline is None:
        raise UsageError("--fail-on-regression needs --baseline FILE")
    if args.baseline is not None and args.fail_on_regression is None:
        args.fail_on_regression = 10.0


def _encoders(arg: str) -> tuple[str, ...]:
    names = [n.strip().lower() for n in arg.split(",") if n.strip()]
    out: set[str] = set()
    for n in names:
        if n in ("both", "all"):
            out.update(ENCODERS)
        elif n in ENCODERS:
            out.add(n)
        else:
            from mobileclip_export.errors import UnknownNameError

            raise UnknownNameError("encoder", n, [*ENCODERS, "both"])
    if not out:
        raise UsageError("no encoder selected; choose image, text or both")
    return tuple(e for e in ENCODERS if e in out)


def _target_names(arg: list[str] | None) -> list[str]:
    from mobileclip_export.export.registry import all_targets, get_target

    names = [n.strip() for item in (arg or ["all"]) for n in item.split(",") if n.strip()]
    if not names or any(n.lower() == "all" for n in names):
        return list(all_targets())
    return list(dict.fromkeys(get_target(n).name for n in names))  # UnknownNameError lists the choices


def _inputs(model: Any, seed: int) -> dict[str, np.ndarray]:
    """One image (seeded uniform RGB in [0,1]) and one tokenized caption, batch 1."""
    from mobileclip_export.models.tokenizer import tokenize

    rng = np.random.default_rng(seed)
    size = int(model.image_size)
    image = rng.random((1, 3, size, size), dtype=np.float32)
    caption = ["a photo of a dog playing on the beach"]
    ids = np.asarray(tokenize(caption, context_length=int(model.context_length)), dtype=np.int32)
    return {"image": image, "text": ids}


def _cast(data: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype in ("int32", "int64", "float16", "float32"):
        return data.astype(dtype)
    return data  # "image" and unknown: the Runner contract is float32 NCHW in [0,1] / int32 ids


def _torch_candidate(target: str, encoder: str, module: Any, data: np.ndarray, size: int) -> H.Candidate:
    import torch

    def load() -> tuple[H.RunFn, str, bool]:
        def run(feeds: Mapping[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(feeds["x"]))

        return run, f"torch {torch.__version__} eager", True

    return H.Candidate(
        target=target,
        encoder=encoder,
        precision="fp32",
        load=load,
        feeds={"x": data},
        kind=H.BASELINE,
        size_bytes=size,
    )


def _artifact_candidate(
    rec: Mapping[str, Any], bundle_dir: Path, data: np.ndarray, threads: int
) -> H.Candidate:
    from mobileclip_export.export.registry import get_target

    target = get_target(rec["target"])
    options = dict(rec.get("options") or {})
    notes = []
    thread_opts = [o.name for o in target.options if o.name in THREAD_OPTION_NAMES]
    for name in thread_opts:
        options[name] = threads
    if not thread_opts:
        notes.append(
            "thread count not settable through the target's options: the runtime picks its own, "
            "confined to the pinned cores"
        )
    path = bundle_dir / rec["path"]
    specs = rec.get("inputs") or []
    name = specs[0]["name"] if specs else rec["encoder"]
    feeds = {name: _cast(data, specs[0].get("dtype") if specs else None)}
    runner_box: list[Any] = []

    def load() -> tuple[H.RunFn, str, bool]:
        runner = target.load(path, options)
        runner_box.append(runner)
        return runner.run, runner.label or target.name, bool(runner.is_deployment_runtime)

    def close() -> None:
        for r in runner_box:
            r.close()

    return H.Candidate(
        target=target.name,
        encoder=rec["encoder"],
        precision=rec["precision"],
        load=load,
        feeds=feeds,
        size_bytes=rec.get("bytes"),
        artifact=str(path),
        close=close,
        notes=notes,
    )


def _failed_row(rec: Mapping[str, Any], why: str) -> dict[str, Any]:
    return {
        "target": rec["target"],
        "encoder": rec["encoder"],
        "precision": rec["precision"],
        "kind": H.DEPLOYMENT,
        "status": why,
        "runtime": "",
        "artifact": rec.get("path"),
        "size_mb": (rec.get("bytes") or 0) / 1e6 or None,
        "latency": None,
    }


def _device_runner(args: argparse.Namespace) -> Any:
    if args.device == "host":
        return None
    from mobileclip_export.benchmarks.devices import get_runner

    runner = get_runner(args.device, serial=args.serial)
    info = runner.check()  # raises DeviceUnavailable with the reason
    log.info("device: %s", info)
    return runner


def _device_rows(
    runner: Any, bundle: Bundle, targets: list[str], encoders: tuple[str, ...], args: argparse.Namespace
) -> list[dict[str, Any]]:
    from mobileclip_export.benchmarks.devices import DeviceJob, tool_for

    tools = {p.name: p for p in (args.device_tool or [])}
    rows = []
    for rec in _select(bundle, targets, encoders, args.precision):
        if rec.get("status") == "failed" or not rec.get("path"):
            continue
        path = bundle.bundle_dir / rec["path"]
        tool_name = tool_for(runner, path)
        if tool_name is None:
            continue
        job = DeviceJob(
            artifact=path,
            target=rec["target"],
            encoder=rec["encoder"],
            precision=rec["precision"],
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            tool=tools.get(tool_name),
        )
        rows.append(runner.run(job).as_row())
    return rows


def _resolve_bundle(args: argparse.Namespace, targets: list[str], encoders: tuple[str, ...]) -> Bundle:
    if args.bundle_dir is not None:
        bundle = read_bundle(args.bundle_dir, args.model)
        exported = bool(bundle.export_args.get("reduced", False))
        if args.reduced and not exported:
            raise UsageError(f"--reduced given, but the bundle in {bundle.bundle_dir} was exported full size")
        args.reduced = exported
        args.seed = int(bundle.export_args.get("seed", args.seed))
        args.checkpoint = args.checkpoint or bundle.export_args.get("checkpoint")
        return bundle
    return export_bundle(
        args.model,
        targets,
        encoders,
        args.precision,
        args.output_dir / "exports",
        reduced=args.reduced,
        seed=args.seed,
        checkpoint=args.checkpoint,
    )


def _select(
    bundle: Bundle, targets: list[str], encoders: tuple[str, ...], precision: str | None
) -> list[dict[str, Any]]:
    return [
        a
        for a in bundle.artifacts
        if a.get("target") in targets
        and a.get("encoder") in encoders
        and (precision is None or a.get("precision") == precision)
    ]


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


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.benchmarks.machine import describe_host

    _check_args(args)
    args.host = describe_host(args.threads)  # before pinning: the machine's cores, not the pinned subset
    before, cores = pin_cores(args.threads)
    args.pinned_cores = cores
    try:
        return _run(args)
    finally:
        if before is not None:
            _set_affinity(before)


def _run(args: argparse.Namespace) -> int:
    import torch

    from mobileclip_export.benchmarks.machine import matmul_peak_gflops
    from mobileclip_export.benchmarks.macs import count_macs, weight_bytes
    from mobileclip_export.export.parity import compare
    from mobileclip_export.models import create_model
    from mobileclip_export.reparam import reparameterize_model

    baseline = regression.load_baseline(args.baseline) if args.baseline else None  # fail fast on a bad file
    encoders = _encoders(args.encoder)
    targets = _target_names(args.target)
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    device_runner = _device_runner(args)  # fail fast: no device attached means no heavy work
    bundle = _resolve_bundle(args, targets, encoders)
    model = create_model(args.model, args.checkpoint, seed=args.seed, reduced=args.reduced).eval()
    reparam = reparameterize_model(model).eval()
    data = _inputs(model, args.seed)

    candidates: list[H.Candidate] = []
    macs: dict[str, Any] = {}
    for enc in encoders:
        train_enc, rep_enc = getattr(model, f"{enc}_encoder"), getattr(reparam, f"{enc}_encoder")
        macs[enc] = count_macs(rep_enc, (torch.from_numpy(data[enc]),))
        train_bytes = weight_bytes(train_enc)[0]
        candidates.append(_torch_candidate("pytorch-train", enc, train_enc, data[enc], train_bytes))
        candidates.append(_torch_candidate("pytorch-reparam", enc, rep_enc, data[enc], macs[enc].param_bytes))

    extra_rows: list[dict[str, Any]] = []
    for rec in _select(bundle, targets, encoders, args.precision):
        if rec.get("status") == "failed" or not rec.get("path"):
            extra_rows.append(_failed_row(rec, f"failed: {rec.get('error') or 'export failed'}"))
        else:
            candidates.append(_artifact_candidate(rec, bundle.bundle_dir, data[rec["encoder"]], args.threads))

    peak_before = matmul_peak_gflops(args.threads)
    results = H.measure(candidates, runs=args.runs, warmup=args.warmup, reference_runs=args.reference_runs)
    peak_after = matmul_peak_gflops(args.threads)
    peak = max(peak_before, peak_after)

    reference = {
        m.candidate.encoder: m.output
        for m in results
        if m.candidate.target == "pytorch-train" and m.output is not None
    }
    reparam_median = {
        m.candidate.encoder: m.stats.median
        for m in results
        if m.candidate.target == "pytorch-reparam" and m.stats is not None
    }
    rows: list[dict[str, Any]] = []
    for m in results:
        c = m.candidate
        lat = m.stats.to_dict() if m.stats else None
        row: dict[str, Any] = {
            "target": c.target,
            "encoder": c.encoder,
            "precision": c.precision,
            "kind": c.kind,
            "status": m.status,
            "runtime": m.runtime,
            "artifact": c.artifact,
            "size_mb": c.size_bytes / 1e6 if c.size_bytes else None,
            "parity_cosine": None,
            "load_ms": m.load_ms if c.kind != H.BASELINE else None,
            "first_ms": m.first_ms,
            "rss_delta_mb": m.rss_delta_mb,
            "latency": lat,
            "gmacs": macs[c.encoder].gmacs,
            "gflops_per_s": None,
            "fraction_of_peak": None,
            "speedup_vs_reparam": None,
            "notes": list(c.notes),
        }
        ref = reference.get(c.encoder)
        if m.output is not None and ref is not None and c.target != "pytorch-train":
            try:
                row["parity_cosine"] = compare(ref, m.output.reshape(ref.shape)).cosine
            except ValueError as err:
                row["status"] = f"failed: output shape {m.output.shape} vs reference {ref.shape} ({err})"
        if lat:
            row["gflops_per_s"] = 2 * macs[c.encoder].macs / 1e9 / (lat["median"] / 1e3)
            row["fraction_of_peak"] = row["gflops_per_s"] / peak
            if c.kind != H.REFERENCE and c.encoder in reparam_median:
                row["speedup_vs_reparam"] = reparam_median[c.encoder] / lat["median"]
        rows.append(row)
    rows.extend(extra_rows)
    H.release(results)
    if device_runner is not None:
        rows.extend(_device_rows(device_runner, bundle, targets, encoders, args))

    estimates: list[dict[str, Any]] = []
    if not args.no_estimates:
        ane = E.AneModel()
        for enc in encoders:
            mr = macs[enc]
            conv = sum(v for k, v in mr.by_op.items() if "conv" in k)
            est = E.estimate_ane(
                enc, mr.gmacs, 1 - conv / mr.macs if mr.macs else 0.0, mr.streamed_param_bytes / 4 / 1e6, ane
            )
            estimates.append(vars(est))
            deployed = [r for r in rows if r["encoder"] == enc and r["kind"] == H.DEPLOYMENT and r["latency"]]
            # The phone runs XNNPACK: prefer host runtimes whose label says they use it, else the fastest.
            xnn = [r for r in deployed if "xnnpack" in (r.get("runtime") or "").lower()]
            if deployed:
                best = min(xnn or deployed, key=lambda r: r["latency"]["median"])
                est = E.estimate_android(enc, best["latency"]["median"], peak)
                est_d = vars(est)
                est_d["method"] += (
                    f"; host runtime: {best['target']} {best['precision']}, {args.threads} thread(s)"
                )
                estimates.append(est_d)

    device = args.host.to_dict()
    doc = report.build_document(
        model={
            "name": args.model,
            "random_init": bool(getattr(model, "random_init", True)),
            "reduced": bool(args.reduced),
            "seed": args.seed,
        },
        device=device,
        settings={
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": args.threads,
            "interleaved": True,
            "reference_runs": min(args.runs, args.reference_runs),
            "peak_matmul_gflops": peak,
            "peak_matmul_gflops_before": peak_before,
            "peak_matmul_gflops_after": peak_after,
            "pinned_cores": args.pinned_cores,
            "bundle_dir": str(bundle.bundle_dir),
        },
        rows=rows,
        estimates=estimates,
    )
    out = args.output_dir
    report.write_json(out / "report.json", doc)
    md = report.markdown(doc)
    (out / "report.md").write_text(md, encoding="utf-8")
    report.append_history(args.history or out / "history.jsonl", doc)
    written = [out / "report.json", out / "report.md"]
    if not args.no_plots:
        try:
            written += report.plots(doc, out)
        except ImportError as err:
            log.warning("plots skipped: %s (pip install 'mobileclip-export[bench]')", err)
    human = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON document
    print(md, file=human)
    print("wrote: " + ", ".join(str(p) for p in written), file=human)

    code = 0
    if not any(r["latency"] for r in rows if r["kind"] != H.BASELINE):
        print("warning: no artifact could be timed on this machine", file=sys.stderr)
    if baseline is not None:
        gate = regression.compare(baseline, doc, args.fail_on_regression)
        print("\n".join(gate.lines()), file=human)
        doc = {**doc, "regression": {"passed": gate.passed, "lines": gate.lines()}}
        if not gate.passed:
            code = 1
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    return code


def main(argv: list[str] | None = None) -> int:
    """``mobileclip-export bench ARGV``; argparse's exits (--help 0, bad flag 2) become the return value."""
    from mobileclip_export.cli import main as cli_main

    try:
        return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())

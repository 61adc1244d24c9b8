"""``mobileclip-export bench``: its flags; the run itself is ``mobileclip_export.benchmarks.run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobileclip_export.benchmarks.devices import runner_names


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
    p.add_argument(
        "--precision",
        default=None,
        help="precision, or several comma-separated (e.g. fp32,fp16,int8: each exported and timed side by "
        "side, compressed ones with their accuracy-guard figures; default: each target's default)",
    )
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
    p.add_argument(
        "--reference-onnx",
        type=Path,
        action="append",
        default=None,
        metavar="PATH",
        help="a plain ONNX export of the reference model (e.g. torch.onnx.export of the train-time encoder), "
        "or a folder of them, one per encoder (told apart by their input); timed in onnxruntime interleaved "
        "with the artifacts, row 'reference-export', and every row's ratio to it reported (repeatable)",
    )
    p.add_argument(
        "--batch-sizes",
        default=None,
        metavar="1,8,32",
        help="also time every runtime at these batch sizes: ms per input, inputs per second and the peak "
        "memory of each row (throughput table + throughput.png); a fresh export then asks each target for "
        "a dynamic or enumerated batch where it offers one",
    )
    _add_output_arguments(p)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
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
        choices=("host", *runner_names()),
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
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, profile every artifact per operator in its runtime's profiler "
        "(profiles.json + a table per artifact in the report)",
    )


def run(args: argparse.Namespace) -> int:
    from mobileclip_export.benchmarks.config import config_from_args
    from mobileclip_export.benchmarks.run import run_bench

    return run_bench(config_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """``mobileclip-export bench ARGV``; argparse's exits (--help 0, bad flag 2) become the return value."""
    from mobileclip_export.cli import main as cli_main

    try:
        return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())

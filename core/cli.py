"""``mobileclip-export`` entry point: argparse subcommands, ``export`` the default.

Adding a subcommand is ONE module plus ONE line in ``COMMANDS`` below:

    # mobileclip_export/<area>/<name>_cli.py (any importable module)
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...   # the command's own flags
    def run(args: argparse.Namespace) -> int: ...                     # returns the exit code

    COMMANDS = {..., "predict": ("mobileclip_export.commands.predict", "zero-shot labels for images")}

The dispatcher adds ``--version``, ``-v``/``-q`` (``args.verbosity``: -1 quiet, 0 default, 1 info, 2 debug)
to every command, sets up logging, and maps errors to exit codes, so a command only raises errors from
``mobileclip_export.errors``. A command that declares ``--json`` gets a JSON error document on stdout
when it fails. Modules are imported only when their command runs (or its ``--help`` is asked for), and
they import torch and converters inside ``run``, so ``--help`` stays fast.

Plain ``mobileclip-export --model ...`` (a flag first) means ``mobileclip-export export --model ...``.

Exit codes: 0 ok, 1 an export/verification/benchmark gate failed, 2 bad input (unknown name, bad flag,
unwritable path, existing bundle without --force, missing extra for an explicit target, bad checkpoint),
130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from mobileclip_export import __version__
from mobileclip_export.errors import MobileClipExportError, UsageError

PROG = "mobileclip-export"
DEFAULT_COMMAND = "export"

# name -> (module with add_arguments/run, one-line summary shown in --help). Order is the --help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("mobileclip_export.commands.export", "export encoders to verified artifacts (default)"),
    "bench": ("mobileclip_export.commands.bench", "time every artifact that runs here and report"),
    "predict": ("mobileclip_export.commands.predict", "zero-shot labels for images, or text search"),
    "matrix": ("mobileclip_export.commands.matrix", "every model x target x precision cell, resumable"),
    "check": ("mobileclip_export.commands.check", "re-hash a bundle against its manifest, re-run parity"),
    "index": ("mobileclip_export.commands.index", "embed a photo folder into a library (resumable)"),
    "search": ("mobileclip_export.commands.search", "rank a library's photos for text or image queries"),
}


class Parser(argparse.ArgumentParser):
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


def _command_module(name: str) -> ModuleType:
    module = COMMANDS[name][0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name and module.startswith(err.name):  # the command's own module is not installed
            raise UsageError(f"the {name!r} command is not available in this install: {err}") from err
        raise


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="only errors and the result")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported and its flags added (lazy --help)."""
    top = Parser(
        prog=PROG,
        allow_abbrev=False,  # a new backend's flag must never turn an abbreviation ambiguous
        description="MobileCLIP -> reparameterized, verified on-device artifacts, and their benchmarks.",
        epilog=f"'{PROG} COMMAND --help' shows a command's flags; without a COMMAND, "
        f"'{DEFAULT_COMMAND}' runs (e.g. {PROG} --model mobileclip_s0 --output-dir exports).",
    )
    _add_common(top)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary, allow_abbrev=False)
        if name == command:
            _command_module(name).add_arguments(p)
            _add_common(p)
    return top


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (its flags and the common ones)."""
    top = build_parser(command)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """(command, argv for the top parser). A leading flag means the default command, except top-level
    help/version."""
    if not argv:
        return DEFAULT_COMMAND, [DEFAULT_COMMAND]
    head = argv[0]
    if head in COMMANDS:
        return head, argv
    if head in ("-h", "--help", "--version"):
        return None, argv
    if head.startswith("-"):
        return DEFAULT_COMMAND, [DEFAULT_COMMAND, *argv]
    close = difflib.get_close_matches(head, list(COMMANDS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UsageError(f"unknown command {head!r}{hint}; choose one of: {', '.join(COMMANDS)}")


def setup_logging(verbosity: int) -> None:
    """Our warnings always show (errors only at -q); converters' own chatter and tqdm bars only at -v."""
    ours = (
        logging.ERROR
        if verbosity < 0
        else logging.WARNING
        if verbosity == 0
        else logging.INFO
        if verbosity == 1
        else logging.DEBUG
    )
    others = max(ours, logging.ERROR) if verbosity <= 0 else ours
    logging.basicConfig(level=others, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mobileclip_export").setLevel(ours)
    if verbosity <= 0:
        os.environ.setdefault("TQDM_DISABLE", "1")  # our progress display replaces converters' bars


def _json_error(args: argparse.Namespace | None, err: BaseException, code: int) -> None:
    """With --json, a machine reader still gets one JSON document on stdout when the run fails."""
    if args is not None and getattr(args, "json", False):
        doc = {"ok": False, "error": str(err), "error_type": type(err).__name__, "exit_code": code}
        print(json.dumps(doc), flush=True)


def _parse(argv: list[str]) -> argparse.Namespace | None:
    """The parsed arguments of the command to run; None when only top-level help was asked for."""
    command, argv = _split_command(argv)
    if command is None and argv[0] in ("-h", "--help"):
        print(build_parser().format_help())
        print(f"'{DEFAULT_COMMAND}' flags (the default command):\n")
        print(command_parser(DEFAULT_COMMAND).format_help())
        return None
    if command is None:  # --version: argparse prints it and exits
        build_parser().parse_args(argv)
        return None
    # The command's own parser parses, so unknown-flag suggestions come from its flags.
    args = command_parser(command).parse_args(argv[1:])
    args.command = command
    args.verbosity = args.verbose - args.quiet
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    try:
        args = _parse(argv)
        if args is None:
            return 0
        setup_logging(args.verbosity)
        return int(_command_module(args.command).run(args) or 0)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        _json_error(args, err, 2)
        return 2
    except MobileClipExportError as err:
        print(f"{PROG}: failed: {err}", file=sys.stderr)
        _json_error(args, err, err.exit_code)
        return err.exit_code
    except BrokenPipeError:  # the reader closed stdout (``--help | head``): stop quietly, like Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0 if args is None else 1
    except KeyboardInterrupt as err:
        print(f"\n{PROG}: interrupted; no partial artifact was left behind", file=sys.stderr)
        _json_error(args, err, 130)
        return 130


# Commands that have written and closed everything when they return (no Ray cluster or pool left running):
# the console script ends them with ``lifeline.exit_without_teardown``.
_EXITS_WITHOUT_TEARDOWN = frozenset({"export"})


def entry() -> NoReturn:
    """The ``mobileclip-export`` console script (tests call ``main``, which never exits the process)."""
    argv = sys.argv[1:]
    code = main(argv)
    try:
        command = _split_command(list(argv))[0]
    except UsageError:
        command = None
    if command not in _EXITS_WITHOUT_TEARDOWN:
        sys.exit(code)
    from mobileclip_export.lifeline import exit_without_teardown

    exit_without_teardown(code)

"""Errors of the Core ML program executor (package error subclasses: the CLI maps exit codes)."""

from __future__ import annotations

from mobileclip_export.errors import ExportFailure, UsageError


class MilExecutorError(ExportFailure):
    """The executor could not evaluate a program (bad package, unsupported construct, op error)."""


class UnsupportedOpError(MilExecutorError):
    """An op type without a NumPy implementation; the message names the op type and the op instance."""

    def __init__(self, op_type: str, op_name: str):
        self.op_type, self.op_name = op_type, op_name
        super().__init__(f"unsupported op {op_type} (at op {op_name})")


class ProgramLoadError(MilExecutorError):
    """The path is not a readable ML Program package (.mlpackage / .mlmodel with weights)."""


class FeedError(UsageError):
    """Inputs given to ``Program.run`` do not match the program's inputs (names, shapes, dtypes)."""

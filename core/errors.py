"""Exception hierarchy shared by every subpackage.

The CLI maps these to exit codes: UsageError -> 2 (the user asked for something invalid),
ExportFailure -> 1 (a valid request that failed to convert or verify). Anything else is a bug.
"""

from __future__ import annotations


class MobileClipExportError(Exception):
    """Base class for all errors this package raises on purpose."""

    exit_code: int = 1


class UsageError(MobileClipExportError):
    """Bad input from the user: unknown name, bad flag, unwritable path, bad checkpoint."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """An unknown model/target/encoder name; the message lists the valid choices."""

    def __init__(self, kind: str, name: str, choices: list[str] | tuple[str, ...]):
        self.kind, self.name, self.choices = kind, name, list(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt, unsafe, of another variant, or has mismatched keys."""


class MissingDependencyError(UsageError):
    """An optional backend extra is not installed; the message carries the pip command."""


def install_hint(extra: str) -> str:
    """The one way to tell a user how to install an optional extra."""
    return f"pip install 'mobileclip-export[{extra}]'"


class ExportFailure(MobileClipExportError):
    """A conversion failed inside a converter."""

    exit_code = 1


class VerificationError(ExportFailure):
    """An artifact ran but its outputs disagree with the train-time model beyond tolerance."""


class RegistryError(MobileClipExportError):
    """Two extensions claim one name (target or alias, reparameterization rule, device runner), or one is
    declared incompletely: a defect in the package or a plugin, never in the user's input."""

    exit_code = 1


class IntegrityError(MobileClipExportError):
    """A bundle file no longer matches the sha256 its manifest records (modified, corrupted or missing)."""

    exit_code = 1


class BundleStateError(MobileClipExportError, RuntimeError):
    """A bundle writer used out of order (e.g. an artifact placed before ``open()``): a bug in the caller."""


def raised_by_us(err: BaseException) -> bool:
    """True when the innermost frame of ``err``'s traceback is in this package's source folders.

    An exception that is not one of our error types but raised from our own code is a bug of ours, not a
    converter's failure; callers that keep going after third-party errors report these loudly instead.
    """
    import sys
    from pathlib import Path

    roots = {
        str(Path(m.__file__).resolve().parent)
        for name, m in list(sys.modules.items())
        if name.split(".")[0] == "mobileclip_export" and getattr(m, "__file__", None)
    }
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = str(Path(last.tb_frame.f_code.co_filename).resolve())
    return any(filename.startswith(root + "/") for root in roots)

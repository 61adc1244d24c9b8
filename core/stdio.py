"""Keep stdout for machine-readable output while converters run.

Converters print progress to stdout (litert-torch's conversion steps, ExecuTorch and Core ML from C++),
which would corrupt ``--json`` output. ``stdout_to_stderr`` routes fd 1 itself to stderr, so writes from
Python, C and C++ alike land on stderr, then restores it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator


def _flush_c_stdio() -> None:
    """libc buffers stdout when it is a pipe; flush it so nothing leaks onto the restored fd later."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbol table (e.g. some non-Linux builds)
        pass


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Within the block, everything written to stdout (Python objects and fd 1) goes to stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (a daemon): only Python-level redirection is possible
        saved = None
    if saved is not None:
        _flush_c_stdio()
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)

"""A child process that dies with its parent: no orphan keeps converting, and none writes into a run whose
parent is gone. On Linux the kernel SIGKILLs the child when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
everywhere a watchdog thread ends it once it has been re-parented."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

log = logging.getLogger(__name__)

ORPHANED = 3  # exit code of a child that stopped because its parent is gone
WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_alive(parent: int) -> bool:
    """Our parent is still ``parent`` (a dead parent re-parents us to init or a subreaper)."""
    return os.getppid() == parent


def _stop_if_orphaned(parent: int) -> None:
    if not parent_alive(parent):
        log.error("parent process %d is gone; stopping without writing a result", parent)
        os._exit(ORPHANED)  # no cleanup that could write into the run


def _watch(parent: int) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        _stop_if_orphaned(parent)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when ``parent`` dies (Linux), check it has not died already, and keep
    checking in a daemon thread (every platform)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as err:
            log.warning("no parent-death signal (%s); relying on the watchdog", err)
    _stop_if_orphaned(parent)  # the parent died before prctl took effect
    threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()


def exit_without_teardown(code: int) -> NoReturn:
    """End a process whose work is written and closed: its exit handlers run (coremltools removes its
    temporary packages in one, logging flushes), stdio is flushed, and the interpreter's teardown of torch
    and the converters, seconds after the work is done, is skipped."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(code)

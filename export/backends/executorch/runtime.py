"""The ExecuTorch runtime's process-wide state shared by running and profiling an artifact."""

from __future__ import annotations


def set_threads(threads: int | None) -> int:
    """Size the runtime's (process-wide) threadpool like the other runtimes' ``--threads``."""
    import os

    from executorch.extension.pybindings import portable_lib

    threads = int(threads or os.cpu_count() or 1)
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return threads

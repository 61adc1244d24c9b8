"""Work functions for tests/test_lanes.py: importable by name in a lane's child process (PYTHONPATH)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any


def report(items: list[str], emit: Callable[[Any], None]) -> dict[str, Any]:
    """Which process ran which items; one event per item and one warning."""
    for item in items:
        emit(("done", item, os.getpid()))
    logging.getLogger("lane-test").warning("lane %d ran %s", os.getpid(), ",".join(items))
    return {"pid": os.getpid(), "items": list(items)}


def fail_in_child(items: list[str], emit: Callable[[Any], None]) -> dict[str, Any]:
    if "child" in items:
        raise ValueError("the converter broke")
    return report(items, emit)


def die_in_child(items: list[str], emit: Callable[[Any], None]) -> dict[str, Any]:
    if "child" in items:
        os._exit(7)
    return report(items, emit)

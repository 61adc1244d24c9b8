"""Work functions for tests/test_lanes.py: importable by name in a lane's child process (PYTHONPATH)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any


def report(item: str, emit: Callable[[Any], None]) -> dict[str, Any]:
    """Which process ran the item: one event and one warning. Items named ``slow-*`` take a moment, so
    the other lane takes the next item meanwhile."""
    if item.startswith("slow"):
        time.sleep(1.0)
    emit(("done", item, os.getpid()))
    logging.getLogger("lane-test").warning("lane %d ran %s", os.getpid(), item)
    return {"pid": os.getpid(), "item": item}


def fail_in_child(item: str, emit: Callable[[Any], None]) -> dict[str, Any]:
    if item == "child" and os.environ.get("LANE_PARENT") != str(os.getpid()):
        raise ValueError("the converter broke")
    return report(item, emit)


def die_in_child(item: str, emit: Callable[[Any], None]) -> dict[str, Any]:
    if item == "child" and os.environ.get("LANE_PARENT") != str(os.getpid()):
        os._exit(7)
    return report(item, emit)

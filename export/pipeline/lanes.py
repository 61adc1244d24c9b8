"""Export lanes: the targets of one run shared between this process and child processes, so every core works.

Converters are single-threaded Python for most of their time, and the GIL keeps threads from overlapping
them; a child process does. Lane 0 runs in the calling thread; each other lane is a child process that gets
its work and the run's shared state pickled over a pipe (nothing is read from disk), sends its progress
events and log records while it works, and returns its results over the same pipe. A child dies with its
parent (``lifeline``); a child that dies or raises leaves a ``LaneFailure`` for its items, never a hang.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

JOBS_ENV = "MOBILECLIP_EXPORT_JOBS"  # lanes when --jobs is not given (tests under pytest-xdist set 1)

T = TypeVar("T")
R = TypeVar("R")
Emit = Callable[[Any], None]
LaneWork = Callable[[list[T], Emit], R]


@dataclass
class LaneFailure:
    """A lane that returned no result: its child process died or raised."""

    message: str


def lane_count(requested: int | None, items: int) -> int:
    """``requested`` lanes, else ``$MOBILECLIP_EXPORT_JOBS``, else one per core (at most 2: beyond that
    memory, not cores, limits full-size conversions); never more lanes than items."""
    if requested is None:
        env = os.environ.get(JOBS_ENV, "").strip()
        requested = int(env) if env.isdigit() else min(2, os.cpu_count() or 1)
    return max(1, min(requested, items))


def split(weights: Sequence[float], lanes: int) -> list[list[int]]:
    """Indices per lane, heaviest first onto the least loaded lane; each lane keeps plan order."""
    load = [0.0] * lanes
    out: list[list[int]] = [[] for _ in range(lanes)]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        lane = min(range(lanes), key=lambda k: load[k])
        load[lane] += weights[i]
        out[lane].append(i)
    return [sorted(ix) for ix in out if ix]


def _send(conn: Connection, obj: Any) -> None:
    # plain pickle: Connection.send's pickler shares torch tensors through file descriptors and a
    # multiprocessing authkey, which a process we started with subprocess does not have
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())  # noqa: S301 - our own child, over our own pipe


class _PipeLog(logging.Handler):
    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info = record.getMessage(), None, None  # plain, picklable
        try:
            _send(self.conn, ("log", record))
        except (OSError, ValueError):  # the parent stopped listening: nothing left to tell it
            pass


def _child(read_fd: int, write_fd: int) -> None:
    """A lane's process: ``(parent pid, log level, work, items)`` in, events, logs and the result out."""
    from mobileclip_export.lifeline import die_with_parent

    inbox, conn = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    parent, level, work, items = _recv(inbox)
    inbox.close()
    die_with_parent(parent)
    root = logging.getLogger()
    root.handlers[:] = [_PipeLog(conn)]
    root.setLevel(level)  # the parent's handlers format what arrives
    try:
        result = work(items, lambda ev: _send(conn, ("event", ev)))
        _send(conn, ("result", result))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which owns the run
        _send(conn, ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        root.handlers[:] = []
        conn.close()


class _Lane(Generic[R]):
    """One child process (``python -m`` this module: unlike multiprocessing's spawn it never re-runs the
    caller's script) and the thread that feeds it its work and relays its messages."""

    def __init__(self, work: LaneWork[Any, R], items: list[Any], emit: Emit) -> None:
        self.result: R | LaneFailure = LaneFailure("the lane's process sent no result")
        to_child, from_child = os.pipe(), os.pipe()
        fds = (to_child[0], from_child[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL
        )
        for fd in fds:
            os.close(fd)
        job = (os.getpid(), logging.getLogger().getEffectiveLevel(), work, items)
        self.relay = threading.Thread(target=self._relay, args=(to_child[1], from_child[0], job, emit))
        self.relay.daemon = True
        self.relay.start()

    def _relay(self, out_fd: int, in_fd: int, job: tuple[Any, ...], emit: Emit) -> None:
        with Connection(out_fd, readable=False) as out:
            try:
                _send(out, job)  # here, not in __init__: lane 0 starts while the child imports
            except OSError as err:
                self.result = LaneFailure(f"the export lane's process did not start: {err}")
        with Connection(in_fd, writable=False) as conn:
            while True:
                try:
                    kind, payload = _recv(conn)
                except (EOFError, OSError):
                    return
                if kind == "event":
                    emit(payload)
                elif kind == "log":
                    logging.getLogger(payload.name).handle(payload)
                elif kind == "result":
                    self.result = payload
                else:
                    self.result = LaneFailure(payload.splitlines()[0])
                    log.debug("export lane failed: %s", payload)

    def join(self) -> R | LaneFailure:
        self.proc.wait()
        self.relay.join()
        if isinstance(self.result, LaneFailure) and self.proc.returncode != 0:
            self.result = LaneFailure(
                f"the export lane's process ended with exit code {self.proc.returncode}"
            )
        return self.result


def run_lanes(
    work: LaneWork[T, R], items: Sequence[T], weights: Sequence[float], lanes: int, emit: Emit
) -> list[tuple[list[T], R | LaneFailure]]:
    """``work(lane_items, emit)`` for each lane, lane 0 here and the others in child processes at the same
    time; ``work`` must be picklable (a module-level function or a ``partial`` of one)."""
    groups = [[items[i] for i in ix] for ix in split(weights, lanes)]
    children = [_Lane(work, g, emit) for g in groups[1:]]
    try:
        here = work(groups[0], emit)
    except BaseException:  # Ctrl-C or a bug here: the children's work is abandoned with the run
        for lane in children:
            lane.proc.kill()
            lane.join()
        raise
    return [(groups[0], here), *zip(groups[1:], [lane.join() for lane in children], strict=True)]


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))

"""Export lanes: the targets of one run shared between this process and child processes, so every core works.

Converters are single-threaded Python for most of their time, and the GIL keeps threads from overlapping
them; a child process does. The items wait in one queue, heaviest first (``Target.export_weight``), and
each lane takes the next one when it is free: lane 0 in the calling thread, the others in child processes.
A child gets the shared state once, pickled over a pipe (nothing is read from disk), then one item at a
time; it sends its progress events and log records while it works and each item's result when done. A child
dies with its parent (``lifeline``); an item whose child raised or died is a ``LaneFailure``, never a hang,
and the items nobody took yet go to the lanes still alive.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

JOBS_ENV = "MOBILECLIP_EXPORT_JOBS"  # lanes when --jobs is not given (the test suite sets 1)

T = TypeVar("T")
R = TypeVar("R")
Emit = Callable[[Any], None]
ItemWork = Callable[[T, Emit], R]


@dataclass
class LaneFailure:
    """An item that returned no result: its lane's process raised or died."""

    message: str


def parse_jobs(text: str, source: str = "--jobs") -> int:
    """A lane count as typed (``--jobs`` or ``$MOBILECLIP_EXPORT_JOBS``); UsageError naming ``source``."""
    if not (text.isdigit() and int(text) >= 1):
        from mobileclip_export.errors import UsageError

        raise UsageError(f"{source} must be a whole number >= 1, got {text!r}")
    return int(text)


def lane_count(requested: int | None, items: int) -> int:
    """``requested`` lanes, else ``$MOBILECLIP_EXPORT_JOBS``, else one per core (at most 2: beyond that
    memory, not cores, limits full-size conversions); never more lanes than items."""
    if requested is None:
        env = os.environ.get(JOBS_ENV, "").strip()
        requested = parse_jobs(env, f"${JOBS_ENV}") if env else min(2, os.cpu_count() or 1)
    return max(1, min(requested, items))


def heaviest_first(weights: Sequence[float]) -> list[int]:
    """The order items are taken in (stable for equal weights): long jobs first keep the lanes even."""
    return sorted(range(len(weights)), key=lambda i: -weights[i])


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
    """A lane's process: ``(parent pid, log level, work)`` in, "ready" out, then items in until ``None``;
    events, log records and one result (or error) per item out."""
    from mobileclip_export.lifeline import die_with_parent

    inbox, conn = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    parent, level, work = _recv(inbox)
    die_with_parent(parent)
    _send(conn, ("ready", None))
    root = logging.getLogger()
    root.handlers[:] = [_PipeLog(conn)]
    root.setLevel(level)  # the parent's handlers format what arrives
    try:
        while (item := _recv(inbox)) is not None:
            try:
                _send(conn, ("result", work(item, lambda ev: _send(conn, ("event", ev)))))
            except Exception as err:  # noqa: BLE001 - this item's failure; the lane takes the next one
                _send(conn, ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        root.handlers[:] = []
        conn.close()


class _Lane(Generic[T, R]):
    """One child process (``python -m`` this module: unlike multiprocessing's spawn it never re-runs the
    caller's script) and the thread that hands it items from the queue and relays its messages."""

    def __init__(self, work: ItemWork[T, R], todo: queue.Queue[int], items: Sequence[T], emit: Emit) -> None:
        self.results: dict[int, R | LaneFailure] = {}
        to_child, from_child = os.pipe(), os.pipe()
        fds = (to_child[0], from_child[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL
        )
        for fd in fds:
            os.close(fd)
        out = Connection(to_child[1], readable=False)
        conn = Connection(from_child[0], writable=False)
        job = (os.getpid(), logging.getLogger().getEffectiveLevel(), work)
        self.relay = threading.Thread(
            target=self._relay, args=(out, conn, job, todo, items, emit), daemon=True
        )
        self.relay.start()

    def _relay(
        self,
        out: Connection,
        conn: Connection,
        job: tuple,
        todo: queue.Queue[int],
        items: Sequence[T],
        emit: Emit,
    ) -> None:
        with out, conn:
            try:
                _send(out, job)  # here, not in __init__: lane 0 starts while the child imports
                if isinstance(self._await(conn, emit), LaneFailure):
                    return  # it never got ready: the other lanes do the work
                while (i := _take(todo)) is not None:
                    _send(out, items[i])
                    self.results[i] = self._await(conn, emit)
                    if isinstance(self.results[i], LaneFailure) and self.proc.poll() is not None:
                        return  # the child is gone: the others take what is left
                _send(out, None)
            except OSError as err:
                log.debug("export lane stopped: %s", err)

    def _await(self, conn: Connection, emit: Emit) -> R | LaneFailure:
        while True:
            try:
                kind, payload = _recv(conn)
            except (EOFError, OSError):
                code = self.proc.wait()
                return LaneFailure(f"the export lane's process ended with exit code {code}")
            if kind == "event":
                emit(payload)
            elif kind == "log":
                logging.getLogger(payload.name).handle(payload)
            elif kind in ("result", "ready"):
                return payload
            else:
                log.debug("export lane item failed: %s", payload)
                return LaneFailure(payload.splitlines()[0])

    def join(self) -> dict[int, R | LaneFailure]:
        self.relay.join()
        self.proc.wait()
        return self.results


def _take(todo: queue.Queue[int]) -> int | None:
    try:
        return todo.get_nowait()
    except queue.Empty:
        return None


def run_lanes(
    work: ItemWork[T, R], items: Sequence[T], weights: Sequence[float], lanes: int, emit: Emit
) -> list[R | LaneFailure]:
    """``work(item, emit)`` for every item, one result per item in item order; lane 0 works here, the
    others in child processes. ``work`` must pickle (a module-level function or a ``partial`` of one)."""
    todo: queue.Queue[int] = queue.Queue()
    for i in heaviest_first(weights):
        todo.put(i)
    children = [_Lane(work, todo, items, emit) for _ in range(lanes - 1)]
    results: dict[int, R | LaneFailure] = {}
    try:
        while (i := _take(todo)) is not None:
            results[i] = work(items[i], emit)
    except BaseException:  # Ctrl-C or a bug here: the children's work is abandoned with the run
        for lane in children:
            lane.proc.kill()
            lane.join()
        raise
    for lane in children:
        results.update(lane.join())
    return [results.get(i, LaneFailure("no export lane was left to take it")) for i in range(len(items))]


if __name__ == "__main__":
    from mobileclip_export.lifeline import exit_without_teardown

    _child(int(sys.argv[1]), int(sys.argv[2]))
    exit_without_teardown(0)  # every result is sent: the parent's join need not wait for a teardown

"""Run a generator job in a separate Python process and relay its events.

Training in a thread of napari's process holds the GIL between torch calls
and while importing torch, and every such hold is a stall of the GUI (DESIGN:
"move training to a subprocess if a thread cannot keep it responsive";
``bench/gui_responsiveness.py`` measures it). :func:`run_in_process` is a job
like any other: it yields the child's :class:`Progress` events and returns
its result, and closing it asks the child to close its job, so the child's
``finally`` blocks (saving the best model) run before the close returns.

Written by hand because the standard pools do not stream progress or cancel
a running task: ``concurrent.futures.ProcessPoolExecutor`` returns only a
final result, and ``multiprocessing.Pool`` has no way to stop one task.

A finished worker process stays idle for the next job, so torch is imported
once per session, not once per job. Arrays travel out of band (pickle
protocol 5), so sending a scan copies it once, in the kernel, without
holding the GIL for the copy.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job

T = TypeVar("T")

#: How long a closed job may take to clean up (save its model) before its
#: process is killed.
CLEANUP_TIMEOUT_S = 60.0
#: How often a waiting parent checks that the child is still alive.
POLL_S = 0.2
#: Idle worker processes kept for later jobs (each holds torch in memory).
MAX_IDLE = 1

_PROGRESS, _RETURNED, _RAISED, _CLOSED = "progress", "returned", "raised", "closed"


class JobProcessError(MedaiError):
    """The worker process running a job ended before the job did."""


class RemoteTraceback(Exception):
    """The child's traceback, attached as ``__cause__`` of an error it raised."""

    def __str__(self) -> str:
        return str(self.args[0])


def _send(conn: Connection, message: Any) -> None:
    """Send ``message`` with its buffers (arrays) out of band, sizes first."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    conn.send(([view.nbytes for view in views], header))
    for view in views:
        conn.send_bytes(view)


def _receive(conn: Connection) -> Any:
    """The next message; its arrays land in writable buffers, copied once."""
    sizes, header = conn.recv()
    buffers = [bytearray(size) for size in sizes]
    for buffer in buffers:
        conn.recv_bytes_into(buffer)
    return pickle.loads(header, buffers=buffers)


def _resolve(target: str) -> Callable[..., Job[Any]]:
    """``"package.module:function"`` -> the function, imported here (in the child)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a MedaiError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return MedaiError(f"{type(exc).__name__}: {exc}")
    return exc


def _run_one(conn: Connection, cancel: Any, target: str, args: tuple, env: dict, cwd: str) -> None:
    """Run one job in the child, relaying events until it ends or is cancelled."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    job = None
    try:
        job = _resolve(target)(*args)
        while True:
            if cancel.is_set():
                job.close()
                _send(conn, (_CLOSED, None))
                return
            try:
                event = next(job)
            except StopIteration as stop:
                _send(conn, (_RETURNED, stop.value))
                return
            _send(conn, (_PROGRESS, event))
    except Exception as exc:
        _send(conn, (_RAISED, (_portable(exc), traceback.format_exc())))
    finally:
        if job is not None:
            job.close()


def _serve(conn: Connection, cancel: Any) -> None:
    """The worker process: run the jobs sent over ``conn`` one after another."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            request = _receive(conn)
        except EOFError:
            return
        if request is None:
            return
        _run_one(conn, cancel, *request)


class _Worker:
    """One spawned worker process and its end of the pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.cancel = context.Event()
        self.process = context.Process(
            target=_serve, args=(child_conn, self.cancel), daemon=True, name="napari-medai job"
        )
        self.process.start()
        child_conn.close()

    def next_message(self, timeout: float | None = None) -> tuple[str, Any]:
        """The child's next message; JobProcessError if it died first or ``timeout`` passed."""
        waited = 0.0
        while not self.conn.poll(POLL_S):
            waited += POLL_S
            if not self.process.is_alive():
                self.process.join()
                raise JobProcessError(_death_message(self.process.exitcode))
            if timeout is not None and waited >= timeout:
                raise JobProcessError(f"the job did not stop within {timeout:.0f} s")
        try:
            return _receive(self.conn)
        except EOFError:
            self.process.join()
            raise JobProcessError(_death_message(self.process.exitcode)) from None

    def stop(self) -> None:
        """End the process: politely if it is idle, else by force."""
        with contextlib.suppress(OSError):
            _send(self.conn, None)
        self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (killed: maybe out of memory)" if exitcode == -signal.SIGKILL else ""
        return f"the job's process ended with signal {name}{hint}; nothing was changed in napari"
    return f"the job's process ended unexpectedly (exit code {exitcode})"


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _take_worker() -> _Worker:
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.process.is_alive():
                return worker
    return _Worker()


def _give_back(worker: _Worker) -> None:
    with _idle_lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(worker)
            return
    worker.stop()


def run_in_process(target: str, *args: Any) -> Job[Any]:
    """Run the job ``target(*args)`` in a worker process; yield its events, return its result.

    ``target`` names the job function as ``"package.module:function"``, so
    its module (and torch, if it needs it) is imported only in the child.
    ``args`` and everything the job yields or returns must pickle. An error
    the job raises is raised here, with the child's traceback as its cause;
    the child's environment and working folder are this process's.
    """
    worker = _take_worker()
    worker.cancel.clear()
    ended = False
    try:
        _send(worker.conn, (target, args, dict(os.environ), os.getcwd()))
        while True:
            kind, value = worker.next_message()
            if kind == _PROGRESS:
                yield value
                continue
            ended = True
            if kind == _RAISED:
                error, text = value
                raise error from RemoteTraceback(text)
            return value
    except JobProcessError:
        ended = True
        worker.stop()
        raise
    finally:
        if not ended:
            _close_remote(worker)
        elif worker.process.is_alive():
            _give_back(worker)


def _close_remote(worker: _Worker) -> None:
    """Close the child's job and wait for its cleanup; a child that hangs is killed."""
    worker.cancel.set()
    try:
        while worker.next_message(timeout=CLEANUP_TIMEOUT_S)[0] == _PROGRESS:
            pass
    except JobProcessError:
        worker.stop()
        return
    _give_back(worker)

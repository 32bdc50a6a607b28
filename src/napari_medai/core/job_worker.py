"""The worker process side of :mod:`napari_medai.core.job_process`.

Started as ``python -m napari_medai.core.job_worker`` (a fresh interpreter
that never imports the parent's ``__main__``, unlike multiprocessing's
spawn, which would rerun a user's napari script). It reads a key from its
standard input, listens on a local address (a Unix socket, a named pipe on
Windows) that it prints on its standard output, accepts the parent's
connection authenticated by that key, then runs the jobs it is sent one
after another and relays their events. A message that arrives while a job
runs asks it to stop. It lowers its own CPU priority first, so that napari's
GUI wins the CPU on a busy machine.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from typing import Any

from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job

PROGRESS, WARNED, RETURNED, RAISED, CLOSED = "progress", "warned", "returned", "raised", "closed"
#: How much below its parent the worker runs (``nice`` steps; POSIX only).
NICENESS = 10
#: What the parent sends to stop the running job (or, too late, an idle worker).
CANCEL = "cancel"


def send(conn: Connection, message: Any) -> None:
    """Send ``message`` with its buffers (arrays) out of band, sizes first.

    The arrays go through the socket without a copy in Python, so a scan
    is sent without holding the GIL for a memcpy of it.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    conn.send(([view.nbytes for view in views], header))
    for view in views:
        conn.send_bytes(view)


def receive(conn: Connection) -> Any:
    """The next message; its arrays land in writable buffers.

    Unpickling is safe here: the connection is local and authenticated by a
    random key that only napari's process and the worker it started know
    (never a file or a network peer), and
    the worker opens model files with the safe loaders (safetensors,
    ``weights_only``) like any other job.
    """
    sizes, header = conn.recv()
    buffers = [bytearray(size) for size in sizes]
    for buffer in buffers:
        conn.recv_bytes_into(buffer)
    return pickle.loads(header, buffers=buffers)


def resolve(target: str) -> Callable[..., Job[Any]]:
    """``"package.module:function"`` -> the function, imported here (in the worker)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _travels(obj: object) -> bool:
    """Whether ``obj`` (an error or warning class of ours) survives a pickle round trip."""
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:
        return False
    return True


def _relay_warnings(conn: Connection, caught: list[warnings.WarningMessage]) -> None:
    """Send the warnings the job raised, so the GUI tells them as it would from a thread."""
    for warning in caught:
        category = warning.category if _travels(warning.category) else UserWarning
        send(conn, (WARNED, (category, str(warning.message))))
    caught.clear()


def _run_one(conn: Connection, target: str, args: tuple, env: dict, cwd: str) -> None:
    """Run one job, relaying its events and warnings until it ends or a cancel arrives."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    job = None
    with warnings.catch_warnings(record=True) as caught:
        try:
            job = resolve(target)(*args)
            while True:
                if conn.poll():
                    receive(conn)  # the only message during a job is CANCEL
                    job.close()
                    _relay_warnings(conn, caught)
                    send(conn, (CLOSED, None))
                    return
                try:
                    event = next(job)
                except StopIteration as stop:
                    _relay_warnings(conn, caught)
                    send(conn, (RETURNED, stop.value))
                    return
                _relay_warnings(conn, caught)
                send(conn, (PROGRESS, event))
        except (BrokenPipeError, ConnectionResetError):
            raise  # the parent has gone: nobody to tell (serve ends quietly)
        except Exception as exc:
            _relay_warnings(conn, caught)
            error = exc if _travels(exc) else MedaiError(f"{type(exc).__name__}: {exc}")
            send(conn, (RAISED, (error, traceback.format_exc())))
        finally:
            if job is not None:
                job.close()


def serve(conn: Connection) -> None:
    """Run the jobs sent over ``conn`` until the parent closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            request = receive(conn)
        except (EOFError, OSError):
            return
        if request is None:
            return
        if request != CANCEL:  # a cancel that came after its job had ended
            try:
                _run_one(conn, *request)
            except (BrokenPipeError, ConnectionResetError):
                return  # napari closed mid-job; the job's own cleanup has run


def connect() -> Connection:
    """Listen on a local address, tell it the parent, accept the parent's authenticated call."""
    key = bytes.fromhex(sys.stdin.readline().strip())
    with Listener(authkey=key) as listener:
        sys.stdout.write(f"{listener.address}\n")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe any more
        return listener.accept()


if __name__ == "__main__":
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    serve(connect())

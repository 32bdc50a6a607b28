"""Run a generator job in a separate Python process and relay its events.

Training in a thread of napari's process holds the GIL between torch calls
and while importing torch, and every such hold is a stall of the GUI (DESIGN:
"move training to a subprocess if a thread cannot keep it responsive";
``bench/gui_responsiveness.py`` measures it). :func:`run_in_process` is a job
like any other: it yields the child's :class:`Progress` events and returns
its result, and closing it asks the child to close its job, so the child's
``finally`` blocks (saving the best model) run before the close returns.

Written by hand because the standard pools do not stream progress or cancel
a running task (``concurrent.futures.ProcessPoolExecutor`` returns only a
final result, ``multiprocessing.Pool`` cannot stop one task), and both start
workers the way multiprocessing does, which reruns the parent's ``__main__``:
a napari script without a ``__main__`` guard would open a second viewer.

A finished worker process stays idle for the next job, so torch is imported
once per session, not once per job; a caller whose jobs share state in the
worker (a prompt session's image and prompts) keeps a process of its own,
a :class:`KeptWorker`. Arrays travel out of band (pickle
protocol 5), so sending a scan copies it once, in the kernel, without
holding the GIL for the copy. The connection is multiprocessing's local one
(a Unix socket, a named pipe on Windows) authenticated by a random key that
only napari's process and its worker know, so it works on every platform.
The worker runs below napari's CPU priority, so the GUI wins the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from multiprocessing.connection import Client
from typing import Any

from napari_medai.core import job_worker
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job, Progress

#: How long a closed job may take to clean up (save its model) before its
#: process is killed.
CLEANUP_TIMEOUT_S = 60.0
#: How often a waiting parent checks that the child is still alive.
POLL_S = 0.2
#: Idle worker processes kept for later jobs (each holds torch in memory).
MAX_IDLE = 1
#: Whether jobs run in a worker process: tests whose jobs use in-process fakes
#: turn it off, and the same job then runs in the caller's thread.
SEPARATE_PROCESS = True
#: What a job says while its worker process starts.
STARTING = "starting a worker process (its first job loads the libraries)"


class JobProcessError(MedaiError):
    """The worker process running a job ended before the job did."""


class RemoteTraceback(Exception):
    """The child's traceback, attached as ``__cause__`` of an error it raised."""


class _Worker:
    """One worker process (``python -m napari_medai.core.job_worker``) and our socket to it."""

    def __init__(self) -> None:
        key = os.urandom(32)
        # The worker imports what this process can: its sys.path, as spawn would pass it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        command = [sys.executable, "-m", "napari_medai.core.job_worker"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Windows' way to start below napari's priority (POSIX workers lower their own).
            creationflags=getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0),
        )
        # The key goes through a pipe, not the command line, which other users can read.
        self.process.stdin.write(key.hex().encode() + b"\n")
        self.process.stdin.close()
        address = self.process.stdout.readline().decode().strip()
        self.process.stdout.close()
        if not address:
            raise JobProcessError(_death_message(self.process.wait()))
        self.conn = Client(address, authkey=key)

    def alive(self) -> bool:
        """Whether the worker process is still running."""
        return self.process.poll() is None

    def next_message(self, timeout: float | None = None) -> tuple[str, Any]:
        """The worker's next message; JobProcessError if it died first or ``timeout`` passed."""
        waited = 0.0
        while not self.conn.poll(POLL_S):
            waited += POLL_S
            if not self.alive():
                raise JobProcessError(_death_message(self.process.returncode))
            if timeout is not None and waited >= timeout:
                raise JobProcessError(f"the job did not stop within {timeout:.0f} s")
        try:
            return job_worker.receive(self.conn)
        except (EOFError, OSError):
            raise JobProcessError(_death_message(self.process.wait())) from None

    def stop(self) -> None:
        """End the process: by closing its socket if it is idle, else by force."""
        self.conn.close()
        try:
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _death_message(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (killed: maybe out of memory)" if returncode == -signal.SIGKILL else ""
        return f"the job's process ended with signal {name}{hint}; nothing was changed in napari"
    return f"the job's process ended unexpectedly (exit code {returncode})"


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _idle_worker() -> _Worker | None:
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.alive():
                return worker
    return None


def _give_back(worker: _Worker) -> None:
    with _idle_lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(worker)
            return
    worker.stop()


def run_in_process(target: str, *args: Any) -> Job[Any]:
    """Run the job ``target(*args)`` in a worker process; yield its events, return its result.

    ``target`` names the job function as ``"package.module:function"``, so
    its module (and torch, if it needs it) is imported only in the worker.
    ``args`` and everything the job yields or returns must pickle. An error
    the job raises is raised here, with the worker's traceback as its cause,
    and its warnings are warned here; the worker's environment and working
    folder are this process's.
    """
    if not SEPARATE_PROCESS:
        return (yield from job_worker.resolve(target)(*args))
    worker = _idle_worker()
    if worker is None:
        yield Progress(None, STARTING)
        worker = _Worker()
    return (yield from _relay(worker, target, args, _give_back))


def _relay(
    worker: _Worker, target: str, args: tuple, release: Callable[[_Worker], None]
) -> Job[Any]:
    """Send the job to ``worker``, yield its events, return its result; ``release`` it after.

    A worker that died is stopped, not released; a job closed here is closed in the
    worker first (its cleanup runs), and a worker that hangs in it is killed.
    """
    ended = False
    try:
        job_worker.send(worker.conn, (target, args, dict(os.environ), os.getcwd()))
        while True:
            kind, value = worker.next_message()
            if kind == job_worker.PROGRESS:
                yield value
                continue
            if kind == job_worker.WARNED:
                category, text = value
                warnings.warn(text, category, stacklevel=1)
                continue
            ended = True
            if kind == job_worker.RAISED:
                error, text = value
                raise error from RemoteTraceback(text)
            return value
    except JobProcessError:
        ended = True
        worker.stop()
        raise
    finally:
        if not ended:
            if _close_remote(worker):
                release(worker)
        elif worker.alive():
            release(worker)


class KeptWorker:
    """A worker process kept for one caller, so what a job leaves there serves the next.

    Jobs run one after another in the same process: a model a job loaded, or a
    session it holds in a module of the worker, is there for the caller's next
    job (a prompt session keeps its image and prompts between updates). The
    process is started by the first job, restarted by the first job after it
    died (the state is gone then: jobs must tell, e.g. by returning None), and
    stopped by :meth:`close` or when this object is collected.
    """

    def __init__(self) -> None:
        self._worker: _Worker | None = None
        self._finalizer: weakref.finalize | None = None

    def run(self, target: str, *args: Any) -> Job[Any]:
        """The job ``target(*args)``, run in this caller's worker process (started if need be)."""
        if not SEPARATE_PROCESS:
            return (yield from job_worker.resolve(target)(*args))
        if self._worker is None or not self._worker.alive():
            self.close()
            yield Progress(None, STARTING)
            self._worker = _Worker()
            self._finalizer = weakref.finalize(self, self._worker.stop)
        return (yield from _relay(self._worker, target, args, lambda _worker: None))

    def close(self) -> None:
        """Stop the worker process (an idle one ends when its socket closes)."""
        if self._finalizer is not None:
            self._finalizer()
        self._worker = self._finalizer = None


def _close_remote(worker: _Worker) -> bool:
    """Close the worker's job and wait for its cleanup; False if the worker hung and was killed."""
    try:
        job_worker.send(worker.conn, job_worker.CANCEL)
        while worker.next_message(timeout=CLEANUP_TIMEOUT_S)[0] in (
            job_worker.PROGRESS,
            job_worker.WARNED,
        ):
            pass
    except (JobProcessError, OSError):
        worker.stop()
        return False
    return True

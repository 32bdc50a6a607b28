"""The one way a widget runs a core generator job: progress bar, Cancel, errors as notifications.

:class:`JobRunner` drives a job (see :mod:`napari_medai.core.jobs`) in a
worker thread through napari's ``create_worker``, forwards its
:class:`~napari_medai.core.jobs.Progress` events to the GUI thread, and hands
the result to a callback on the GUI thread, where layers may be touched.
Errors become napari notifications and no result; Cancel closes the job at
its next yield, running its ``finally`` in the worker thread.

Progress is shown honestly: every change of message is shown when it
arrives (only fraction-only updates are throttled, and the last one is always
shown), and the bar turns busy while the job yields no fraction
(``Progress(None, ...)``) or has been silent for a while, e.g. during one long
network call or the first import of torch. Busy is told by the bar's text
("working… 12 s", ticking once a second), not Qt's indeterminate animation:
inside napari's window every frame of that animation recomposes the whole
window, OpenGL canvas included (~30 ms each on software OpenGL).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt, QThread, QTimer, Signal
from qtpy.QtGui import QShowEvent
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget
from superqt.utils import GeneratorWorker

from napari_medai._qt.software_gl import paint_apart
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job, Progress

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Resolution of the progress bar (fractions are shown to 0.1 %).
_STEPS = 1000
#: Least time between two repaints of the bar and its message. Inside napari's
#: window any repaint recomposes the whole window, OpenGL canvas included
#: (~30 ms on software OpenGL), so progress paints about twice a second.
_PAINT_INTERVAL_S = 0.5
#: After this long without a progress event the bar turns busy. Longer than
#: the ~0.5 s jobs aim for, so that a bar fed every half second never flickers.
_QUIET_BUSY_S = 1.0
#: Warnings meant for developers, not shown as notifications (still logged).
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class JobOutcome(StrEnum):
    """How a job ended, passed to ``on_finished``."""

    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class _JobRuntimeError(Exception):
    """Carries a job's ``RuntimeError`` to ``errored``.

    superqt's worker takes a ``RuntimeError`` from the generator for "worker
    deleted" and then never emits ``finished``; torch raises plenty of them.
    """


class _JobWorker(GeneratorWorker):
    """superqt's generator worker that closes the job in the worker thread.

    On ``quit()`` superqt stops iterating but leaves the generator open, so its
    ``finally`` would run whenever it is garbage collected, maybe on the GUI
    thread. Closing it here runs the cleanup at once, before ``finished``.
    """

    def work(self) -> Any:
        try:
            return super().work()
        finally:
            self._gen.close()


def _drive(job_factory: Callable[[], Job[T]]) -> Job[T]:
    """Make the job (in the worker thread) and relay its events and result."""
    try:
        return (yield from job_factory())
    except RuntimeError as exc:
        raise _JobRuntimeError(str(exc)) from exc


def _quit_all(workers: set[GeneratorWorker]) -> None:
    for worker in list(workers):
        worker.quit()


def _call(callback: Callable[..., None], *args: Any) -> Exception | None:
    """Call a widget's callback; return its exception instead of letting it escape."""
    try:
        callback(*args)
    except Exception as exc:  # reported to the user and logged by the caller
        return exc
    return None


def describe_error(exc: BaseException) -> str:
    """A short message for the user: a :class:`MedaiError` as written, else its type too."""
    if isinstance(exc, MedaiError):
        return str(exc)
    text = f"unexpected {type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class _Run:
    """State of the job in flight."""

    title: str
    worker: GeneratorWorker
    on_result: Callable[[Any], None]
    on_progress: Callable[[Progress], None] | None
    on_finished: Callable[[JobOutcome], None] | None
    cancel_requested: bool = False
    error: BaseException | None = None
    has_result: bool = False
    result: Any = None
    warned: set[str] = field(default_factory=set)


class _SteadyLabel(QLabel):
    """A wrapping label that always keeps two lines' height, its whole text as tooltip.

    A message that grows from one line to two would resize the dock, and napari
    re-renders its whole canvas when a dock's height changes (100-320 ms on
    software OpenGL); a longer message is cut here and shown in full in the
    tooltip and in napari's notification.
    """

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.setFixedHeight(2 * self.fontMetrics().lineSpacing() + 2)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self.setToolTip(text)


class JobRunner(QWidget):
    """Progress bar, message and Cancel button that run one job at a time.

    The owning widget calls :meth:`start` from its Run button and disables
    that button while :attr:`running` (connect :attr:`runningChanged`).
    """

    #: Emitted with True when a job starts and False when it has ended.
    runningChanged = Signal(bool)
    #: A warning the job's own thread raised, handed to the GUI thread (see _route_warning).
    _jobWarned = Signal(tuple)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bar = QProgressBar()
        self._bar.setRange(0, _STEPS)
        self._bar.setValue(0)
        self._busy = False
        self._busy_since = 0.0
        self._cancel = QPushButton("Cancel")
        self._cancel.setEnabled(False)
        self._cancel.clicked.connect(self.cancel)
        self._message = _SteadyLabel()
        row = QHBoxLayout()
        row.addWidget(self._bar, 1)
        row.addWidget(self._cancel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self._message)
        self._run: _Run | None = None
        self._painted_at = 0.0
        self._event_at = 0.0
        #: The bar's value in steps, kept while the bar is busy.
        self._value = 0
        self._pending_fraction: float | None = None
        self._pending_message: str | None = None
        # Shows the last fraction-only update once the throttle interval has passed.
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.timeout.connect(self._show_fraction)
        # Turns the bar busy when the job has been quiet for a while.
        self._watch = QTimer(self)
        self._watch.setInterval(round(_QUIET_BUSY_S * 250))
        self._watch.timeout.connect(self._check_quiet)
        self._outcome: JobOutcome | None = None
        # A job outliving its widget (dock closed, viewer closed) is stopped.
        # A finalizer, not a slot on ``destroyed``: the garbage collector may
        # clear a Python slot before Qt calls it, which crashes the process.
        self._workers: set[GeneratorWorker] = set()
        weakref.finalize(self, _quit_all, self._workers)
        self._jobWarned.connect(self._on_warned)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt's name)
        """Once docked, its dock paints apart from napari's canvas (see :func:`paint_apart`)."""
        super().showEvent(event)
        paint_apart(self)

    @property
    def running(self) -> bool:
        """Whether a job is in flight (from :meth:`start` until it has ended)."""
        return self._run is not None

    @property
    def outcome(self) -> JobOutcome | None:
        """How the last job ended; None before the first one ends."""
        return self._outcome

    @property
    def cancel_button(self) -> QPushButton:
        """The Cancel button (enabled only while a job runs)."""
        return self._cancel

    @property
    def fraction(self) -> float:
        """The fraction shown by the progress bar (0..1; the last one while busy)."""
        return self._value / _STEPS

    @property
    def busy(self) -> bool:
        """Whether the bar shows "working" without a fraction."""
        return self._busy

    @property
    def message(self) -> str:
        """The text under the progress bar."""
        if self._pending_message is not None:
            return self._pending_message
        return self._message.text()

    def start(
        self,
        job_factory: Callable[[], Job[T]],
        on_result: Callable[[T], None],
        on_progress: Callable[[Progress], None] | None = None,
        on_finished: Callable[[JobOutcome], None] | None = None,
        *,
        title: str = "Job",
    ) -> None:
        """Run ``job_factory()`` in a worker thread.

        ``job_factory`` is called in the worker thread and returns the job
        generator (e.g. ``functools.partial(segment_job, volume, config)``).
        All callbacks run on the GUI thread: ``on_progress`` for every event,
        ``on_result`` with the job's return value only if it completed and was
        not cancelled, ``on_finished`` last, always, with the outcome.
        ``title`` names the job in messages ("Segment failed: ...").
        Raises RuntimeError if a job is already running.
        """
        if self._run is not None:
            raise RuntimeError(f"{self._run.title} is still running; cancel it first")
        worker = create_worker(
            _drive, job_factory, _worker_class=_JobWorker, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        # Direct: _route_warning runs in the thread that warned, so it can tell whose it is.
        worker.warned.connect(self._route_warning, Qt.ConnectionType.DirectConnection)
        worker.finished.connect(self._on_finished)
        self._run = _Run(title, worker, on_result, on_progress, on_finished)
        self._workers.add(worker)
        self._set_busy(False)
        self._set_value(0)
        self._pending_fraction = None
        self._pending_message = None
        self._event_at = time.monotonic()
        self._watch.start()
        self._message.setText(f"{title}: starting")
        self._cancel.setEnabled(True)
        self.runningChanged.emit(True)
        worker.start()

    def clear(self) -> None:
        """Empty the bar and the line while no job runs: the dock refused before starting
        one and says why itself, so the last job's "done" must not stay in view."""
        if self._run is None:
            self._set_value(0)
            self._message.setText("")

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; no result will be delivered."""
        run = self._run
        if run is None or run.cancel_requested:
            return
        run.cancel_requested = True
        run.worker.quit()
        self._cancel.setEnabled(False)
        self._pending_message = None
        self._message.setText(f"{run.title}: cancelling")

    def _on_yielded(self, event: Progress) -> None:
        run = self._run
        if run is None:
            return
        now = time.monotonic()
        self._event_at = now
        if event.message and not run.cancel_requested:
            self._pending_message = event.message
        if event.fraction is None:
            self._set_busy(True)
        else:
            self._pending_fraction = min(max(float(event.fraction), 0.0), 1.0)
        # Painting costs the GUI thread a window repaint; jobs may yield far more often.
        wait = _PAINT_INTERVAL_S - (now - self._painted_at)
        if wait <= 0 or self._pending_fraction == 1.0 or (self.busy and event.fraction is not None):
            self._show_fraction()
        elif not self._flush.isActive():
            self._flush.start(max(1, round(wait * 1000)))
        if run.on_progress is not None:
            error = _call(run.on_progress, event)
            if error is not None:
                run.error = run.error or error
                self.cancel()

    def _show_fraction(self) -> None:
        """Show the last message and fraction received (a fraction leaves the busy state)."""
        self._flush.stop()
        if self._pending_message is not None:
            if self._pending_message != self._message.text():
                self._message.setText(self._pending_message)
            self._pending_message = None
        if self._pending_fraction is not None:
            self._set_busy(False)
            self._set_value(round(self._pending_fraction * _STEPS))
            self._pending_fraction = None
        self._painted_at = time.monotonic()

    def _check_quiet(self) -> None:
        if self._run is not None and time.monotonic() - self._event_at > _QUIET_BUSY_S:
            self._set_busy(True)
        if self._busy:
            self._show_busy_time()

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self._busy_since = time.monotonic()
            with self._deferred_paint():
                if busy:
                    self._show_busy_time()
                else:
                    self._bar.setFormat("%p%")
                    self._bar.setValue(self._value)

    def _show_busy_time(self) -> None:
        text = f"working… {time.monotonic() - self._busy_since:.0f} s"
        if text != self._bar.format():
            self._bar.setFormat(text)

    def _set_value(self, value: int) -> None:
        self._value = value
        if not self.busy:
            with self._deferred_paint():
                self._bar.setValue(value)

    @contextlib.contextmanager
    def _deferred_paint(self) -> Iterator[None]:
        """Let the bar repaint with the next frame, not at once.

        QProgressBar.setValue repaints synchronously, and inside napari's
        window that repaint recomposes the whole window (its OpenGL canvas
        included): tens of ms per move on software OpenGL. With updates
        disabled the repaint is skipped, and re-enabling them only schedules
        an ordinary update, merged with the window's next paint.
        """
        self._bar.setUpdatesEnabled(False)
        try:
            yield
        finally:
            self._bar.setUpdatesEnabled(True)

    def _on_returned(self, result: Any) -> None:
        if self._run is not None:
            self._run.has_result = True
            self._run.result = result

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, _JobRuntimeError) and exc.__cause__ is not None:
            exc = exc.__cause__
        if self._run is not None:
            self._run.error = self._run.error or exc

    def _route_warning(self, showwarning_args: tuple) -> None:
        """Tell the job's warnings from napari's own.

        While a job runs, superqt catches every warning of the process for it,
        napari's included. One raised on the GUI thread is napari's: it is shown
        as napari shows warnings, without this job's name; the job's own (from its
        thread, relayed from the worker process) go on to :meth:`_on_warned`.
        """
        if QThread.currentThread() is self.thread():
            message, category = showwarning_args[0], showwarning_args[1]
            if not issubclass(category, _DEVELOPER_WARNINGS):
                show_warning(str(message))
            return
        self._jobWarned.emit(showwarning_args)

    def _on_warned(self, showwarning_args: tuple) -> None:
        message, category = showwarning_args[0], showwarning_args[1]
        run = self._run
        title = run.title if run is not None else "Job"
        logger.warning("%s: %s", title, message)
        text = str(message)
        if run is None or issubclass(category, _DEVELOPER_WARNINGS) or text in run.warned:
            return
        run.warned.add(text)
        show_warning(f"{title}: {text}")

    def _on_finished(self) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        self._workers.discard(run.worker)
        self._watch.stop()
        self._show_fraction()
        self._set_busy(False)
        self._cancel.setEnabled(False)
        completed = run.has_result and not run.cancel_requested
        if completed and run.error is None:
            self._set_value(_STEPS)
            self._message.setText(f"{run.title}: done")
            run.error = _call(run.on_result, run.result)
        if run.error is not None:
            outcome = JobOutcome.FAILED
            self._set_value(0)  # a failed job's last fraction is not progress
            self._report(run.title, run.error)
        elif completed:
            outcome = JobOutcome.DONE
        else:
            outcome = JobOutcome.CANCELLED
            self._set_value(0)
            self._message.setText(f"{run.title}: cancelled")
        self._outcome = outcome
        if self._run is None:  # on_result may have started the next job
            self.runningChanged.emit(False)
        if run.on_finished is not None:
            error = _call(run.on_finished, outcome)
            if error is not None:
                self._report(run.title, error)

    def _report(self, title: str, error: BaseException) -> None:
        """Tell the user in one line (notification and label); log the details."""
        text = describe_error(error)
        if isinstance(error, MedaiError):
            logger.warning("%s failed: %s", title, text)
        else:
            logger.error("%s failed", title, exc_info=(type(error), error, error.__traceback__))
        if self._run is None:
            self._message.setText(f"{title} failed: {text}")
        show_error(f"{title} failed: {text}")

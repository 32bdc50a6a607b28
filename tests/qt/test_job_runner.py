"""JobRunner (progress, results on the GUI thread, errors, Cancel) and the heartbeat."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from functools import partial

import pytest
from heartbeat import EventLoopMonitor
from napari.utils.notifications import NotificationSeverity
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.jobs import Progress


class JobState:
    """What a test job saw: the threads it ran on and whether its cleanup ran."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.cleanup_thread: int | None = None
        self.started = threading.Event()

    @property
    def cleaned_up(self) -> bool:
        return self.cleanup_thread is not None


def counting_job(state: JobState, steps: int):
    try:
        for i in range(steps):
            state.threads.add(threading.get_ident())
            yield Progress((i + 1) / steps, f"step {i + 1} of {steps}", payload=i * i)
        return sum(i * i for i in range(steps))
    finally:
        state.cleanup_thread = threading.get_ident()


def endless_job(state: JobState, period_s: float = 0.05):
    try:
        i = 0
        while True:
            state.started.set()
            time.sleep(period_s)
            i += 1
            yield Progress(min(i / 1000, 1.0), f"iteration {i}")
    finally:
        state.cleanup_thread = threading.get_ident()


def failing_job(state: JobState, error: Exception):
    try:
        yield Progress(0.1, "reading")
        raise error
    finally:
        state.cleanup_thread = threading.get_ident()


@pytest.fixture
def runner(qtbot):
    widget = JobRunner()
    qtbot.addWidget(widget)
    return widget


def wait_idle(qtbot, runner: JobRunner, timeout_ms: int = 5000) -> None:
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout_ms)


def test_progress_and_result_arrive_on_the_gui_thread(qtbot, runner):
    state = JobState()
    events, results, outcomes, running = [], [], [], []
    callback_threads = set()

    def on_progress(event):
        callback_threads.add(threading.get_ident())
        events.append(event)

    def on_result(value):
        callback_threads.add(threading.get_ident())
        results.append(value)

    runner.runningChanged.connect(running.append)
    runner.start(
        partial(counting_job, state, 5), on_result, on_progress, outcomes.append, title="Count"
    )
    assert runner.running
    wait_idle(qtbot, runner)

    assert [event.payload for event in events] == [i * i for i in range(5)]
    assert [event.fraction for event in events] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert results == [sum(i * i for i in range(5))]
    assert outcomes == [JobOutcome.DONE] and runner.outcome is JobOutcome.DONE
    assert running == [True, False]
    main = threading.main_thread().ident
    assert callback_threads == {main}
    assert main not in state.threads and len(state.threads) == 1
    assert state.cleanup_thread in state.threads
    assert runner.fraction == 1.0
    assert not runner.cancel_button.isEnabled()


def phased_job(release: threading.Event):
    """Phases in quick succession, then one long step, as a one-window inference runs."""
    yield Progress(None, "loading model")
    yield Progress(0.02, "mapping the scan into the model's space")
    yield Progress(0.05, "running the model")
    release.wait(10)  # one long network call: no event for a while
    yield Progress(0.9, "mapping the result back")
    return "mask"


def test_every_phase_shows_and_a_long_step_turns_the_bar_busy(qtbot, runner):
    release = threading.Event()
    shown = []  # the message under the bar when each event's callback runs
    results = []
    runner.start(
        partial(phased_job, release),
        results.append,
        lambda event: shown.append((runner.message, runner.busy)),
        title="Segment",
    )
    try:
        qtbot.waitUntil(lambda: len(shown) == 3, timeout=5000)
        # Each phase's message showed, though they came within milliseconds;
        # the bar was busy while loading (no fraction) and left it with a fraction.
        assert [message for message, _busy in shown] == [
            "loading model",
            "mapping the scan into the model's space",
            "running the model",
        ]
        assert shown[0][1] is True
        # The last fraction lands though it came within the throttle interval.
        qtbot.waitUntil(lambda: runner.fraction == pytest.approx(0.05), timeout=1000)
        assert not runner.busy
        # No news for a while: the bar turns busy rather than sitting still.
        qtbot.waitUntil(lambda: runner.busy, timeout=3000)
        assert runner.message == "running the model"
    finally:
        release.set()
    wait_idle(qtbot, runner)
    assert results == ["mask"] and not runner.busy and runner.fraction == 1.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UnreadableFileError("scan.nii.gz is empty (0 bytes)"), "scan.nii.gz is empty (0 bytes)"),
        (ValueError("bad shape"), "ValueError: bad shape"),
        # torch raises RuntimeError; superqt alone would never report the job finished.
        (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
    ],
)
def test_an_error_becomes_a_notification_and_no_result(
    qtbot, runner, notifications, error, expected
):
    state = JobState()
    results, outcomes = [], []
    runner.start(
        partial(failing_job, state, error), results.append, None, outcomes.append, title="Open"
    )
    wait_idle(qtbot, runner)

    assert results == []
    assert outcomes == [JobOutcome.FAILED]
    errors = [n for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1
    assert errors[0].message.startswith("Open failed:")
    assert expected in errors[0].message
    assert "Traceback" not in errors[0].message
    assert expected in runner.message
    assert runner._bar.value() == 0  # the failed job's 10% is not left as progress
    assert state.cleaned_up


def test_cancel_stops_the_job_within_a_second_and_runs_its_cleanup(qtbot, runner):
    state = JobState()
    results, outcomes = [], []
    runner.start(partial(endless_job, state), results.append, None, outcomes.append)
    qtbot.waitUntil(lambda: runner.fraction > 0, timeout=5000)
    assert runner.cancel_button.isEnabled()

    t0 = time.perf_counter()
    qtbot.mouseClick(runner.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, runner, timeout_ms=2000)
    elapsed = time.perf_counter() - t0

    assert elapsed < 1.0
    assert state.cleaned_up
    assert state.cleanup_thread != threading.main_thread().ident
    assert results == []
    assert outcomes == [JobOutcome.CANCELLED]


def test_one_job_at_a_time(qtbot, runner):
    state = JobState()
    run_button_enabled = []
    runner.runningChanged.connect(lambda running: run_button_enabled.append(not running))
    runner.start(partial(endless_job, state), lambda _result: None)
    with pytest.raises(RuntimeError, match="still running"):
        runner.start(partial(endless_job, JobState()), lambda _result: None)
    runner.cancel()
    wait_idle(qtbot, runner)
    assert run_button_enabled == [False, True]
    # The runner is free again.
    runner.start(partial(counting_job, JobState(), 2), lambda _result: None)
    wait_idle(qtbot, runner)
    assert runner.outcome is JobOutcome.DONE


def test_a_failing_result_callback_is_reported_not_raised(qtbot, runner, notifications):
    def on_result(_value):
        raise UnreadableFileError("the labels do not fit scan.nii.gz")

    outcomes = []
    runner.start(partial(counting_job, JobState(), 2), on_result, None, outcomes.append)
    wait_idle(qtbot, runner)
    assert outcomes == [JobOutcome.FAILED]
    assert [n.message for n in notifications] == ["Job failed: the labels do not fit scan.nii.gz"]


def warning_job():
    for _ in range(3):
        warnings.warn("slices are unevenly spaced: 1.1 to 7.0 mm", UserWarning, stacklevel=1)
        warnings.warn("this argument is deprecated", DeprecationWarning, stacklevel=1)
        yield Progress(0.5, "reading")
    return "volume"


def test_user_warnings_are_shown_once_and_developer_warnings_not(qtbot, runner, notifications):
    results = []
    runner.start(warning_job, results.append, title="Open")
    wait_idle(qtbot, runner)
    assert results == ["volume"]
    shown = [(n.severity, n.message) for n in notifications]
    assert shown == [
        (NotificationSeverity.WARNING, "Open: slices are unevenly spaced: 1.1 to 7.0 mm")
    ]


def test_a_warning_napari_raises_during_a_job_is_not_named_after_the_job(
    qtbot, runner, notifications
):
    """superqt catches every warning while a job runs; one from the GUI thread is napari's."""
    state = JobState()
    runner.start(partial(endless_job, state), lambda _result: None, title="Train")
    assert state.started.wait(5)
    warnings.warn("a layer's contrast limits were reset", UserWarning, stacklevel=1)
    runner.cancel()
    wait_idle(qtbot, runner)
    messages = [n.message for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert messages == ["a layer's contrast limits were reset"]


def test_deleting_the_widget_stops_its_job(qtbot):
    runner = JobRunner()
    state = JobState()
    runner.start(partial(endless_job, state), lambda _result: None)
    assert state.started.wait(5)
    runner.deleteLater()
    del runner
    gc.collect()
    qtbot.waitUntil(lambda: state.cleaned_up, timeout=2000)
    assert state.cleanup_thread != threading.main_thread().ident


def test_a_runner_inside_a_reference_cycle_is_collected_without_crashing(qtbot):
    """Regression: a slot on the runner's own ``destroyed`` crashed the process here."""

    class Owner(QWidget):
        def __init__(self) -> None:
            super().__init__()
            self.runner = JobRunner()
            QVBoxLayout(self).addWidget(self.runner)
            self.me = self

    owner = Owner()
    state = JobState()
    owner.runner.start(partial(endless_job, state), lambda _result: None)
    assert state.started.wait(5)
    del owner
    gc.collect()
    qtbot.waitUntil(lambda: state.cleaned_up, timeout=2000)


def test_heartbeat_measures_a_blocked_event_loop(qtbot):
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=50)
    monitor.start()
    qtbot.wait(100)
    t0 = time.perf_counter()
    time.sleep(0.3)  # block the GUI thread
    blocked_ms = (time.perf_counter() - t0) * 1000
    qtbot.wait(100)
    monitor.stop()

    assert monitor.ticks > 5
    assert blocked_ms - 15 <= monitor.worst_stall_ms <= blocked_ms + 100
    long_stalls = [stall for stall in monitor.stalls if stall.ms > 200]
    assert len(long_stalls) == 1
    assert long_stalls[0].ms == monitor.worst_stall_ms
    assert 0.1 <= long_stalls[0].at_s <= monitor.duration_s
    assert monitor.summary()["worst_stall_ms"] == round(monitor.worst_stall_ms, 1)
    assert not monitor.running


def test_heartbeat_counts_a_stall_still_going_on_at_stop(qtbot):
    with EventLoopMonitor(interval_ms=10) as monitor:
        qtbot.wait(50)
        time.sleep(0.2)
    assert monitor.worst_stall_ms >= 180


def test_a_longer_message_never_changes_the_runners_height(qtbot, runner):
    """A height change resizes the dock, and napari re-renders its canvas (100-320 ms)."""
    runner.resize(300, runner.sizeHint().height())
    runner.show()
    qtbot.waitExposed(runner)
    heights = set()
    for text in ("", "done", "starting a worker process (its first job loads the libraries) " * 3):
        runner._message.setText(text)
        heights.add(runner.sizeHint().height())
    assert len(heights) == 1
    assert runner._message.toolTip().startswith("starting a worker process")

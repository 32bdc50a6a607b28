"""Every model job runs out of napari's process, below its CPU priority, and napari never stalls.

Issue 18's acceptance: in a fresh Python process (napari's: this pytest
process imports torch for its fixtures), one napari window at 1366x768 shows
the phantom sample with the docks tabbed beside it. The script clicks, each
to its end, Classify's Run, Evaluate and Train, a Cohort run over two small
scans, the torch-free docks (Evaluate, Label statistics, Export), then
Generate's Train, Sample and Preview augmentations, while a heartbeat timer
measures the event loop. It reports as JSON: the outcomes, which of torch and MONAI
napari's process imported, the worst stall and in which step, and the
worker's niceness against napari's.

The window measured runs from the first click to the last result shown: it
includes starting the worker, every job, and turning each result into layers,
tables and plots on the GUI thread. The bound holds everywhere but where a
result is shown (a dock's result callback and the event-loop pass after it,
which draws it): that is on the GUI thread by nature, and on software OpenGL
napari alone takes 100-170 ms of CPU to add a 4x32x32 image layer (vispy
visual, shaders, layer controls, first paint). Those stalls are reported, next
to a bare ``add_image`` measured the same way in the same window, not hidden.
A dock's first paint comes before the first click (each dock is brought to the
front once, as opening it would).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: The issue's bound for a stall of napari's event loop.
STALL_BOUND_MS = 100.0
HEARTBEAT_MS = 10
THRESHOLD_MS = 25.0
#: Every job of the script ends within this; torch's first import in the worker is the
#: slowest part (5-20 s on a busy machine).
JOB_TIMEOUT_S = 120
WINDOW = (1366, 768)
#: Which of napari's modules would mean a job ran in napari's process.
TORCH_MODULES = ("torch", "monai")
DOCKS = ("Classify", "Cohort", "Evaluate", "Label statistics", "Export", "Generate")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> dict[str, Any]:
    """The fresh napari process's report (its models and scans are made here, with torch)."""
    import cohort_scans
    from cohort_scans import save_slice_classifier, save_tiny_model, write_cohort

    root = tmp_path_factory.mktemp("out_of_napari")
    study = root / "study"
    write_cohort(study, phantoms=2, broken=False)
    paths = {
        "study": study,
        "segmenter": save_tiny_model(root / "tiny-seg", modality="CT"),
        "classifier": save_slice_classifier(root / "tiny-cls"),
        "out": root / "out",
    }
    helpers = str(Path(cohort_scans.__file__).parent)  # and heartbeat, for the script
    env = {
        **os.environ,
        "NAPARI_MEDAI_MODELS": str(root / "models"),
        "PYTHONPATH": os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, __file__, json.dumps({k: str(v) for k, v in paths.items()})],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_job_completes(scripted):
    assert scripted["outcomes"] == {step: "DONE" for step in scripted["outcomes"]}
    assert list(scripted["outcomes"]) == [
        "classify run", "classify evaluate", "classify train", "classify save metrics",
        "cohort run", "evaluate", "label statistics", "export",
        "generate train", "generate sample", "generate augmentation preview",
    ]  # fmt: skip


def test_torch_and_monai_never_enter_napari(scripted):
    assert scripted["imported"] == []


def test_the_event_loop_never_stalls_over_100_ms(scripted):
    heartbeat = scripted["heartbeat"]
    # The heartbeat really ran: a tick per 100 ms at least, through every step.
    assert heartbeat["ticks"] >= 10 * heartbeat["duration_s"]
    over = [stall for stall in heartbeat["stalls"] if stall[1] >= STALL_BOUND_MS]
    ours = [stall for stall in over if not stall[3]]
    assert not ours, (
        f"stalls over {STALL_BOUND_MS:.0f} ms outside showing a result, as "
        f"(start s, ms, step, showing a result): {ours}; all over the bound: {over}; "
        f"steps as (name, start s, end s): {scripted['steps']}"
    )


def test_workers_run_below_napari_s_priority(scripted):
    if not hasattr(os, "nice"):
        pytest.skip("POSIX niceness; Windows is checked by its start flag below")
    workers = scripted["worker_niceness"]
    assert workers, "no worker process was seen"
    assert all(nice > scripted["napari_niceness"] for nice in workers.values()), scripted


def test_a_layer_change_does_not_reread_the_classifier_list(make_napari_viewer, monkeypatch):
    """Classify's model list reads every card on disk: on each layer change it was a stall."""
    import numpy as np

    from napari_medai._qt import classify_widget

    viewer = make_napari_viewer()
    widget = classify_widget.ClassifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.add_image(np.zeros((4, 8, 8)), name="scan")
    reads = []
    monkeypatch.setattr(classify_widget, "list_models", lambda: reads.append(1) or [])
    labels = viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="painted")
    assert labels in widget.labels.choices  # the layer pickers follow the layer list
    assert reads == []


@pytest.mark.parametrize(
    "dock",
    [
        "Classify", "Generate", "Prompt", "Evaluate", "Label statistics", "Export",
        "Segment list", "Segment", "Train", "Cohort",
    ],
)  # fmt: skip
def test_a_long_layer_name_leaves_the_dock_within_a_third_of_a_laptop_screen(
    make_napari_viewer, dock
):
    """Found on this test's window: a segmentation named by its labels widened the docks."""
    import numpy as np

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 8, 8)), name="scan")
    viewer.add_labels(
        np.zeros((4, 8, 8), np.uint8),
        name="scan – liver + spleen + kidney_right + kidney_left + vertebra (3d)",
    )
    dock_widget, _widget = viewer.window.add_plugin_dock_widget("napari-medai", dock)
    assert dock_widget.sizeHint().width() <= WINDOW[0] // 3


def test_the_worker_starts_below_normal_priority_where_windows_has_it(monkeypatch):
    """Windows' branch: the worker is started with BELOW_NORMAL_PRIORITY_CLASS.

    On POSIX the flag does not exist and Popen refuses any creation flag, so the
    flag is faked and recorded, and the worker started without it.
    """
    from napari_medai.core import job_process

    below_normal = 0x4000  # Windows' value of BELOW_NORMAL_PRIORITY_CLASS
    popen, flags = subprocess.Popen, []

    def recording_popen(*args: Any, creationflags: int = 0, **kwargs: Any) -> Any:
        flags.append(creationflags)
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", below_normal, raising=False)
    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    worker = job_process._Worker()
    try:
        assert worker.alive()
    finally:
        worker.stop()
    assert flags == [below_normal]


# napari's side: run as a script in a fresh process (no torch imported above this line).


def wait_until_idle(runner: Any, timeout_s: float) -> None:
    """Run the event loop until ``runner``'s job ends (or the timeout passes)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if not runner.running:
        return
    loop = QEventLoop()

    def ended(running: bool) -> None:
        if not running:
            loop.quit()

    runner.runningChanged.connect(ended)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    runner.runningChanged.disconnect(ended)


def worker_niceness() -> dict[int, int]:
    """The niceness of every job worker process napari's process started, by pid."""
    import psutil

    workers = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if "napari_medai.core.job_worker" in " ".join(child.cmdline()):
                workers[child.pid] = child.nice()
        except psutil.NoSuchProcess:
            continue
    return workers


class Session:
    """Clicks the buttons of one window's docks, each job to its end, and keeps a timeline."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.started = time.perf_counter()
        self.outcomes: dict[str, str] = {}
        self.steps: list[tuple[str, float, float]] = []
        self.workers: dict[int, int] = {}
        self.docks = {
            name: viewer.window.add_plugin_dock_widget("napari-medai", name, tabify=True)
            for name in DOCKS
        }
        self.showing: list[list[float]] = []  # a job's result shown: [start s, end s]
        self._settling: list[Any] = []  # the timers that end those spans
        for _dock, widget in self.docks.values():
            self._time_results(widget.runner)

    def _time_results(self, runner: Any) -> None:
        """Record when ``runner`` turns a job's result into layers, tables and plots."""
        start = runner.start

        def timed_start(job: Any, on_result: Callable[[Any], None], *args: Any, **kw: Any) -> None:
            def timed(result: Any) -> None:
                with self.showing_result():
                    on_result(result)

            start(job, timed, *args, **kw)

        runner.start = timed_start

    @contextmanager
    def showing_result(self) -> Iterator[None]:
        """A span of showing a result, until the event loop is first on time again.

        napari draws a new layer in later passes of the event loop (slicing, the
        first draw), so the span lasts until a 10 ms timer comes back within the
        heartbeat's threshold: every stall that follows the result without a
        responsive moment in between belongs to it.
        """
        from qtpy.QtCore import QTimer

        span = [self.now(), math.inf]
        self.showing.append(span)
        try:
            yield
        finally:
            timer = QTimer()
            timer.setInterval(HEARTBEAT_MS)
            due = [time.perf_counter() + HEARTBEAT_MS / 1000]

            def tick() -> None:
                now = time.perf_counter()
                if now - due[0] < THRESHOLD_MS / 1000:
                    span[1] = self.now()
                    timer.stop()
                due[0] = now + HEARTBEAT_MS / 1000

            timer.timeout.connect(tick)
            timer.start()
            self._settling.append(timer)

    def was_showing(self, began_s: float) -> bool:
        """Whether a stall that began at ``began_s`` came from showing a result.

        A stall begins when the first late tick was due: up to one heartbeat interval
        (and the timer's slack) before the work that delayed it started.
        """
        slack = (HEARTBEAT_MS + 5) / 1000
        return any(start - slack <= began_s <= end for start, end in self.showing)

    def now(self) -> float:
        """Seconds since the first click."""
        return time.perf_counter() - self.started

    def dock(self, name: str) -> Any:
        """Bring the dock ``name`` to the front (as a click on its tab would); its widget."""
        dock_widget, widget = self.docks[name]
        dock_widget.raise_()
        return widget

    def click(self, step: str, button: Any, runner: Any) -> None:
        """Click ``button`` and run the event loop until its job has ended and shown its result."""
        start = self.now()
        if not button.enabled:
            self.outcomes[step] = f"DISABLED: {button.tooltip}"
            return
        button.native.click()
        wait_until_idle(runner, JOB_TIMEOUT_S)
        self.workers.update(worker_niceness())
        outcome = "TIMEOUT" if runner.running else getattr(runner.outcome, "name", "NONE")
        self.outcomes[step] = outcome + (f": {runner.message}" if outcome == "FAILED" else "")
        self.steps.append((step, start, self.now()))

    def call(self, step: str, action: Callable[[], object]) -> None:
        """Do ``action`` (no job: it returns at once) as a step of the timeline."""
        start = self.now()
        try:
            action()
        except Exception as error:  # reported, not raised: the report must come out
            self.outcomes[step] = f"FAILED: {error}"
        else:
            self.outcomes[step] = "DONE"
        self.steps.append((step, start, self.now()))

    def step_at(self, at_s: float) -> str:
        """The step running at ``at_s`` seconds, or the one whose fields were being set."""
        for step, start, end in self.steps:
            if at_s <= end:
                return step if at_s >= start else f"setting up {step}"
        return "after the last step"


def classify(session: Session, paths: dict[str, Path], organs: Any) -> None:
    """Run the tiny classifier on every slice, evaluate it on spleen slices, train one."""
    dock = session.dock("Classify")
    dock.pick_model(paths["classifier"])
    session.click("classify run", dock.run_button, dock.runner)
    dock.source.value = dock.source.choices[1]
    dock.labels.value = organs
    dock.values.value = "2"
    session.click("classify evaluate", dock.evaluation.button, dock.runner)
    dock.train_time.value = 1
    session.click("classify train", dock.train_button, dock.runner)
    session.call("classify save metrics", lambda: dock.metrics.save(paths["out"] / "metrics"))


def generate(session: Session) -> None:
    """Train a GAN for a second, sample four patches, preview the augmentations."""
    dock = session.dock("Generate")
    dock.patch.value = 32
    dock.budget.value = 1
    dock.count.value = 4
    session.click("generate train", dock.train_button, dock.runner)
    session.click("generate sample", dock.sample_button, dock.runner)
    session.click("generate augmentation preview", dock.augment_button, dock.runner)


def cohort(session: Session, paths: dict[str, Path]) -> None:
    """Segment the two scans of the study with the tiny segmentation model."""
    dock = session.dock("Cohort")
    dock.cohort.value, dock.out.value = paths["study"], paths["out"] / "masks"
    dock.models.add_source(paths["segmenter"])
    session.click("cohort run", dock.run_button, dock.runner)


def torch_free_docks(session: Session, organs: Any, shifted: Any, out: Path) -> None:
    """Evaluate the shifted organs against the organs, measure the organs, export them."""
    evaluate = session.dock("Evaluate")
    evaluate.prediction.value, evaluate.reference.value = shifted, organs
    session.click("evaluate", evaluate.evaluate_button, evaluate.runner)
    stats = session.dock("Label statistics")
    stats.labels_layer.value = organs
    session.click("label statistics", stats.measure_button, stats.runner)
    export = session.dock("Export")
    export.labels_layer.value = organs
    export.path.value = out / "organs.nii.gz"
    session.click("export", export.export_button, export.runner)


def began(stall: Any) -> float:
    """When a stall began: its late tick came at ``at_s``, ``ms`` after it was due."""
    return stall.at_s - stall.ms / 1000


def drive(paths: dict[str, Path]) -> dict[str, Any]:
    """Open the window, click through the docks under a heartbeat, report what happened."""
    import napari
    import numpy as np
    from heartbeat import EventLoopMonitor
    from qtpy.QtTest import QTest

    viewer = napari.Viewer()
    viewer.window._qt_window.resize(*WINDOW)
    _scan, organs = viewer.open_sample("napari-medai", "phantom_ct")
    shifted = viewer.add_labels(
        np.roll(organs.data, 2, axis=2),
        name="shifted organs",
        affine=organs.affine,
        units=organs.units,
        axis_labels=organs.axis_labels,
    )
    paths["out"].mkdir(parents=True, exist_ok=True)
    session = Session(viewer)
    for name in DOCKS:  # opened: each dock drawn once, as a user who looked at it
        session.dock(name)
        QTest.qWait(100)
    QTest.qWait(500)  # as a user would: the window is drawn before the first click
    monitor = EventLoopMonitor(interval_ms=HEARTBEAT_MS, threshold_ms=THRESHOLD_MS)
    monitor.start()
    session.started = time.perf_counter()
    # For comparison, napari alone adding and removing a small image (napari's removal
    # runs a full gc.collect(): 250 ms here with no plugin code in the profile).
    with session.showing_result():
        bare = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="napari alone")
    QTest.qWait(300)
    with session.showing_result():
        viewer.layers.remove(bare)
    QTest.qWait(300)
    classify(session, paths, organs)
    cohort(session, paths)
    torch_free_docks(session, organs, shifted, paths["out"])
    generate(session)
    monitor.stop()
    stalls = [
        (round(at, 2), round(s.ms), session.step_at(at), session.was_showing(at))
        for s in monitor.stalls
        for at in [began(s)]
    ]
    bare_end = session.steps[0][1] if session.steps else math.inf
    napari_alone = [ms for at, ms, _step, adding in stalls if adding and at < bare_end]
    report = {
        "outcomes": session.outcomes,
        "imported": [name for name in TORCH_MODULES if name in sys.modules],
        "heartbeat": {
            **monitor.summary(),
            "worst": max(stalls, key=lambda stall: stall[1], default=None),
            "stalls": stalls,
            "napari_alone_adding_or_removing_a_layer_ms": max(napari_alone, default=0),
        },
        "steps": [(step, round(start, 2), round(end, 2)) for step, start, end in session.steps],
        "napari_niceness": os.nice(0) if hasattr(os, "nice") else None,
        "worker_niceness": session.workers,
    }
    viewer.close()
    return report


if __name__ == "__main__":
    report = drive({name: Path(path) for name, path in json.loads(sys.argv[1]).items()})
    sys.stdout.write(json.dumps(report) + "\n")

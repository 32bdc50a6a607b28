"""Benchmark: how responsive napari stays while the Train widget trains (issue 4, item 5).

Opens napari with the phantom CT (``make_phantom()``, 40x128x128) and a
labels layer holding the liver on three axial slices, docks the plugin's
Train widget from the manifest, clicks Train with a ``--seconds`` time budget
and runs the Qt event loop until training has ended. A 10 ms heartbeat
(``tests/helpers/heartbeat.py``) records how late each
tick comes: that lateness is the stall a user would feel. The goal is a worst
stall under 100 ms. ``stalls_over_50ms`` lists each such stall as [seconds
after the click, milliseconds].

Without a display it runs on a private Xvfb server (napari's canvas is then
drawn by Mesa's software OpenGL, which makes every window repaint cost CPU).
The machine may be shared: the 1-minute load average is reported too.

``--threads N`` trains on N torch threads instead of the widget's own choice
(issue 11, item 9: does training on every core stall the GUI?). Issue 11 adds
a goal for the live plot: p99 stall under 20 ms.

``--plot-only`` leaves training out and measures the live plot alone (painted
on the GUI thread since issue 21), idle and then fed a point every 50 ms.

Prints one JSON object.
Usage: ``python bench/gui_responsiveness.py [--seconds 20] [--threads N | --plot-only]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The event-loop heartbeat is test and bench tooling (tests/helpers), the headless
# display helpers belong to the demo launcher (scripts): neither ships in the package.
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "helpers"), str(REPO / "scripts")]

PLUGIN = "napari-medai"
LIVER = 1
PAINTED_SLICES = 3


def painted_liver(truth: np.ndarray) -> np.ndarray:
    """The liver on ``PAINTED_SLICES`` axial slices spread over its extent, zero elsewhere."""
    present = np.nonzero((truth == LIVER).any(axis=(1, 2)))[0]
    sparse = np.zeros_like(truth)
    for i in range(PAINTED_SLICES):
        z = present[len(present) * (i + 1) // (PAINTED_SLICES + 1)]
        sparse[z] = (truth[z] == LIVER) * LIVER
    return sparse


def _stall_summary(monitor) -> dict:
    stalls = np.array([stall.ms for stall in monitor.stalls])
    late = np.concatenate([stalls, np.zeros(max(0, monitor.ticks - len(stalls)))])
    return {
        "p99_stall_ms": round(float(np.percentile(late, 99)), 1) if late.size else None,
        "worst_stall_ms": round(monitor.worst_stall_ms, 1),
    }


def measure_plot(seconds: float) -> dict:
    """The live plot alone: stalls while idle, then while fed a point every 50 ms."""
    import math

    from heartbeat import EventLoopMonitor
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medai._qt import plot

    app = QApplication.instance() or QApplication([])
    widget = plot.LivePlot(
        x_label="iteration",
        y_label="loss",
        right_y_label="validation Dice",
        right_y_range=(0.0, 1.0),
        empty_text="no data",
    )
    widget.set_series("loss", [], [], label="loss")
    widget.set_series("dice", [], [], axis="right", style="line+points", label="validation Dice")
    widget.resize(420, 200)
    widget.show()

    def run(ms: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(round(ms), loop.quit)
        loop.exec()

    run(1000)  # the window is shown and laid out
    step = [0]

    def add() -> None:
        step[0] += 1
        widget.append("loss", step[0], math.exp(-step[0] / 100) + 0.05 * math.sin(step[0]))
        if step[0] % 10 == 0:
            widget.append("dice", step[0], 1 - math.exp(-step[0] / 200))

    feeder = QTimer()
    feeder.setInterval(50)
    feeder.timeout.connect(add)
    result: dict = {}
    for phase, feeding in (("idle", False), ("feeding", True)):
        frames = widget.redraws
        monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
        monitor.start()
        if feeding:
            feeder.start()
        run(seconds * 1000)
        monitor.stop()
        feeder.stop()
        result[phase] = {**_stall_summary(monitor), "frames": widget.redraws - frames}
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    result["qt_platform"] = app.platformName()
    return result


def measure(seconds: float, threads: int | None) -> dict:
    import torch
    from heartbeat import EventLoopMonitor
    from napari.layers import Layer
    from napari.viewer import Viewer
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medai._napari.layers import image_layer_data, labels_layer_data
    from napari_medai.core.phantom import make_phantom
    from napari_medai.core.volume import LabelMap

    volume, truth = make_phantom()
    viewer = Viewer(title="napari-medai responsiveness bench")
    image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
    sparse = LabelMap(painted_liver(truth.array), volume.geometry)
    labels = viewer.add_layer(Layer.create(*labels_layer_data(sparse, "annotation")))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.pair_rows[0].image_combo.value = image
    widget.pair_rows[0].labels_combo.value = labels
    widget.time_spin.value = seconds
    if threads:
        widget.threads_combo.value = threads
    config_threads = widget.config(widget.output_dir()).num_threads
    # As a user would: the window is drawn and laid out before Train is clicked.
    settle = QEventLoop()
    QTimer.singleShot(1500, settle.quit)
    settle.exec()

    done = QEventLoop()
    widget.runner.runningChanged.connect(lambda running: running or done.quit())
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
    monitor.start()
    started = time.perf_counter()
    widget.train_button.native.click()
    done.exec()
    monitor.stop()
    wall = time.perf_counter() - started

    stalls = np.array([stall.ms for stall in monitor.stalls])
    late = np.concatenate([stalls, np.zeros(max(0, monitor.ticks - len(stalls)))])
    result = {
        "worst_stall_ms": round(monitor.worst_stall_ms, 1),
        "p99_stall_ms": round(float(np.percentile(late, 99)), 1) if late.size else None,
        "stalls_over_100ms": int((stalls > 100).sum()),
        "stalls_over_50ms": [
            [round(stall.at_s, 2), round(stall.ms)] for stall in monitor.stalls if stall.ms > 50
        ],
        "iterations": len(widget.plot.series("loss")),
        "validations": len(widget.plot.series("dice")),
        "plot_frames": widget.plot.redraws,
        "outcome": str(widget.runner.outcome.value),
        "training_budget_s": seconds,
        "wall_s": round(wall, 2),
        "heartbeat_interval_ms": monitor.interval_ms,
        "heartbeat_ticks": monitor.ticks,
        "torch_threads_training": config_threads,
        "threads_chosen_by": "--threads" if threads else "widget (auto)",
        "cpu_cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "phantom_shape": list(volume.spatial_shape),
        "painted_slices": PAINTED_SLICES,
        "qt_platform": QApplication.platformName(),
        "torch": torch.__version__,
    }
    viewer.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="training time budget")
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="no training: the live plot alone, idle then fed a point every 50 ms",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for training (e.g. every core); default: as the widget picks",
    )
    args = parser.parse_args()
    from launch_demo import has_display, headless_display

    # Models go to a throw-away folder, not the user's model folder.
    os.environ["NAPARI_MEDAI_MODELS"] = tempfile.mkdtemp(prefix="napari-medai-bench-")
    # napari prints its notifications to stdout; this program's stdout is the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        display = contextlib.nullcontext() if has_display() else headless_display()
        with display:
            if args.plot_only:
                result = measure_plot(args.seconds)
            else:
                result = measure(args.seconds, args.threads)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

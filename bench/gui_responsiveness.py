"""Benchmark: how responsive napari stays while the Train widget trains (issue 4, item 5).

Opens napari with the phantom CT (``make_phantom()``, 40x128x128) and a
labels layer holding the liver on three axial slices, docks the plugin's
Train widget from the manifest, clicks Train with a ``--seconds`` time budget
and runs the Qt event loop until training has ended. A 10 ms heartbeat
(:class:`~napari_medai._qt.heartbeat.EventLoopMonitor`) records how late each
tick comes: that lateness is the stall a user would feel. The goal is a worst
stall under 100 ms. ``stalls_over_50ms`` lists each such stall as [seconds
after the click, milliseconds].

Without a display it runs on a private Xvfb server (napari's canvas is then
drawn by Mesa's software OpenGL, which makes every window repaint cost CPU).
The machine may be shared: the 1-minute load average is reported too.

Prints one JSON object. Usage: ``python bench/gui_responsiveness.py [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

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


def measure(seconds: float) -> dict:
    import torch
    from napari.layers import Layer
    from napari.viewer import Viewer
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medai._napari.layers import image_layer_data, labels_layer_data
    from napari_medai._qt.heartbeat import EventLoopMonitor
    from napari_medai.core.phantom import make_phantom
    from napari_medai.core.training.trainer import training_threads
    from napari_medai.core.volume import LabelMap

    volume, truth = make_phantom()
    viewer = Viewer(title="napari-medai responsiveness bench")
    image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
    sparse = LabelMap(painted_liver(truth.array), volume.geometry)
    labels = viewer.add_layer(Layer.create(*labels_layer_data(sparse, "annotation")))
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.pair_rows[0].image_combo.set_layer(image)
    widget.pair_rows[0].labels_combo.set_layer(labels)
    widget.time_spin.setValue(seconds)
    # As a user would: the window is drawn and laid out before Train is clicked.
    settle = QEventLoop()
    QTimer.singleShot(1500, settle.quit)
    settle.exec()

    done = QEventLoop()
    widget.runner.runningChanged.connect(lambda running: running or done.quit())
    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=0.0)
    monitor.start()
    started = time.perf_counter()
    widget.train_button.click()
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
        "torch_threads_training": training_threads(keep_free=1),
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
    args = parser.parse_args()
    from napari_medai._qt.launch import has_display, headless_display

    # Models go to a throw-away folder, not the user's model folder.
    os.environ["NAPARI_MEDAI_MODELS"] = tempfile.mkdtemp(prefix="napari-medai-bench-")
    # napari prints its notifications to stdout; this program's stdout is the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        if has_display():
            result = measure(args.seconds)
        else:
            with headless_display():
                result = measure(args.seconds)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

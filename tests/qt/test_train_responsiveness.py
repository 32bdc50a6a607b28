"""The GUI stays responsive while the Train widget trains (issue 4, item 5).

A Qt timer heartbeat runs on the event loop while the widget trains on the
phantom in its worker process; every tick that comes late is a stall. The goal
is a worst stall under 100 ms; the bound asserted here leaves room for a busy
shared CI machine, and ``bench/gui_responsiveness.py`` reports the real figure.
"""

from __future__ import annotations

import numpy as np
from heartbeat import EventLoopMonitor
from napari.layers import Layer
from qtpy.QtCore import Qt

from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.train_widget import TrainWidget
from napari_medai.core.volume import LabelMap

TRAIN_SECONDS = 5
#: The goal is 100 ms; a CI runner shared with other jobs gets some slack.
WORST_STALL_BOUND_MS = 250.0


def test_event_loop_keeps_ticking_while_training(
    qtbot, make_napari_viewer, phantom, tmp_path, monkeypatch
):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    volume, truth = phantom
    viewer = make_napari_viewer(show=True)
    image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
    sparse = np.zeros_like(truth.array)
    for z in (9, 15):
        sparse[z] = truth.array[z]
    labels = viewer.add_layer(
        Layer.create(*labels_layer_data(LabelMap(sparse, volume.geometry), "annotation"))
    )
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    widget.pair_rows[0].image_combo.value = image
    widget.pair_rows[0].labels_combo.value = labels
    widget.time_spin.value = TRAIN_SECONDS
    # As a user would: the window is drawn and laid out before Train is clicked.
    qtbot.waitExposed(widget.native)
    qtbot.wait(500)

    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=100.0)
    monitor.start()
    qtbot.mouseClick(widget.train_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    monitor.stop()

    assert widget.runner.outcome is JobOutcome.DONE
    iterations = len(widget.plot.series("loss"))
    assert iterations > 0 and widget.plot.redraws > 0
    # The heartbeat really ran: at least a tick per 100 ms of training.
    assert monitor.ticks >= 10 * TRAIN_SECONDS
    assert monitor.worst_stall_ms < WORST_STALL_BOUND_MS, (
        f"worst stall {monitor.worst_stall_ms:.0f} ms; stalls over 100 ms as (s, ms): "
        f"{[(round(s.at_s, 2), round(s.ms)) for s in monitor.stalls]}; {iterations} iterations"
    )

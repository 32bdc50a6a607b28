"""Window/level by mouse drag on a real napari canvas, with the Window presets dock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from heartbeat import EventLoopMonitor
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_medai._napari.window_level import Window
from napari_medai._qt.window_widget import WindowPresetWidget

LOW, HIGH = -1000, 2000  # the scan's value range in HU
SPAN = HIGH - LOW
CT_METADATA = {"napari_medai": {"provenance": {"modality": "CT"}}}
LEFT, NO_BUTTON = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
CTRL, NO_MODIFIER = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.NoModifier


def ct_volume(shape=(8, 64, 64)) -> np.ndarray:
    data = np.full(shape, 40, dtype=np.int16)
    data[:, 0, 0], data[:, -1, -1] = LOW, HIGH
    return data


def send_mouse(canvas, kind, pixel, buttons, modifiers) -> None:
    """A Qt mouse event on the canvas widget, as a real mouse sends it."""
    button = LEFT if kind != QEvent.Type.MouseMove else NO_BUTTON
    event = QMouseEvent(kind, QPointF(*pixel), button, buttons, modifiers)
    QTest.qWait(15)  # vispy drops a mouse move within 10 ms of the last one; napari throttles
    QApplication.sendEvent(canvas, event)


def drag(viewer, shift, modifiers=CTRL, steps=4) -> None:
    """Left-drag from the canvas centre by ``shift`` (x, y) screen pixels, in ``steps`` moves."""
    canvas = viewer.window._qt_viewer.canvas.native
    start = np.array([canvas.width() / 2, canvas.height() / 2]).round()
    send_mouse(canvas, QEvent.Type.MouseMove, start, NO_BUTTON, modifiers)
    send_mouse(canvas, QEvent.Type.MouseButtonPress, start, LEFT, modifiers)
    for step in range(1, steps + 1):
        send_mouse(
            canvas, QEvent.Type.MouseMove, start + step / steps * np.asarray(shift), LEFT, modifiers
        )
    send_mouse(
        canvas, QEvent.Type.MouseButtonRelease, start + np.asarray(shift), NO_BUTTON, modifiers
    )
    QTest.qWait(30)  # napari delivers the last throttled move


@pytest.fixture
def viewer_and_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240), name="CT", metadata=CT_METADATA)
    widget = WindowPresetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Window presets")
    qtbot.waitExposed(viewer.window._qt_viewer.canvas.native)
    return viewer, widget, ct


def window_of(layer) -> Window:
    return Window.from_limits(layer.contrast_limits)


def test_ctrl_drag_sets_width_and_level_and_the_dock_shows_them(viewer_and_dock):
    viewer, widget, ct = viewer_and_dock
    height, width = viewer.canvas.size
    centre = tuple(viewer.scene.camera.center)
    assert widget.values.text() == "CT: level 40 HU, width 400 HU"

    drag(viewer, (width / 4, height / 10))

    # A quarter of the canvas to the right: a quarter of the range wider; a tenth down: level up.
    assert window_of(ct).width == pytest.approx(400 + SPAN / 4, abs=SPAN / width)
    assert window_of(ct).level == pytest.approx(40 + SPAN / 10, abs=SPAN / height)
    assert tuple(viewer.scene.camera.center) == pytest.approx(centre)  # it did not pan
    level, window = window_of(ct).level, window_of(ct).width
    assert widget.values.text() == f"CT: level {level:.0f} HU, width {window:.0f} HU"


def test_a_plain_drag_pans_until_the_mouse_mode_is_on(viewer_and_dock, qtbot):
    viewer, widget, ct = viewer_and_dock
    centre = np.array(viewer.scene.camera.center)
    drag(viewer, (120, 0), modifiers=NO_MODIFIER)
    assert window_of(ct) == Window(40.0, 400.0)
    assert not np.allclose(viewer.scene.camera.center, centre)  # napari's pan still works

    qtbot.mouseClick(widget.drag_button, LEFT)
    assert widget.drag.enabled
    centre = np.array(viewer.scene.camera.center)
    drag(viewer, (120, 0), modifiers=NO_MODIFIER)
    assert window_of(ct).width > 400
    assert np.allclose(viewer.scene.camera.center, centre)


def test_presets_still_apply_after_a_drag(viewer_and_dock, qtbot):
    viewer, widget, ct = viewer_and_dock
    drag(viewer, (150, -40))
    assert window_of(ct) != Window(40.0, 400.0)

    qtbot.mouseClick(widget.buttons["lung"], LEFT)

    assert ct.contrast_limits == pytest.approx([-1350, 150])
    assert widget.values.text() == "CT: level -600 HU, width 1500 HU"
    drag(viewer, (viewer.canvas.size[1] / 10, 0))  # a drag starts from the preset
    assert window_of(ct).width == pytest.approx(1500 + SPAN / 10, abs=SPAN / 100)


def test_painting_in_a_labels_layer_is_unaffected_when_the_mode_is_off(viewer_and_dock):
    viewer, widget, ct = viewer_and_dock
    labels = viewer.add_labels(np.zeros(ct.data.shape, dtype=np.uint8), name="mask")
    labels.mode = "paint"
    labels.brush_size = 5
    centre = np.array(viewer.scene.camera.center)

    drag(viewer, (60, 0), modifiers=NO_MODIFIER)
    painted = int(np.count_nonzero(labels.data))
    assert painted > 0
    drag(viewer, (0, 60), modifiers=CTRL)  # Ctrl + drag while painting: the brush keeps the mouse

    assert window_of(ct) == Window(40.0, 400.0)
    assert np.allclose(viewer.scene.camera.center, centre)
    assert not widget.drag.enabled


#: The goal is 100 ms; a CI runner shared with other jobs gets some slack.
WORST_STALL_BOUND_MS = 250.0


def test_dragging_on_a_512x512x300_ct_keeps_the_event_loop_ticking(viewer_and_dock):
    viewer, widget, _ = viewer_and_dock
    big = viewer.add_image(ct_volume((300, 512, 512)), name="big CT", metadata=CT_METADATA)
    viewer.layers.selection = {big}
    QTest.qWait(300)
    widget.drag.scan_facts(big)  # as the dock does when the layer arrives

    monitor = EventLoopMonitor(interval_ms=10, threshold_ms=100.0)
    with monitor:
        drag(viewer, (300, 200), steps=40)
    assert window_of(big).width > SPAN / 2  # the drag happened
    assert monitor.ticks >= 40  # the heartbeat ran through the drag
    assert monitor.worst_stall_ms < WORST_STALL_BOUND_MS, (monitor.summary(), monitor.stalls)


def test_the_dock_and_its_drag_never_import_torch(tmp_path):
    """napari's process stays free of torch and MONAI after clicking through the dock."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import napari
        from qtpy.QtWidgets import QApplication
        from napari.utils._test_utils import read_only_mouse_event
        from napari.utils.interactions import (
            mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks,
        )

        viewer = napari.Viewer(show=False)
        viewer.add_image(np.arange(-1000, 1000, dtype=np.int16).reshape(2, 10, 100))
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Window presets")
        for button in widget.buttons.values():
            button.click()
        widget.drag_button.click()
        for kind, pos in (("mouse_press", (10, 10)), ("mouse_move", (90, 40))):
            callbacks = mouse_press_callbacks if kind == "mouse_press" else mouse_move_callbacks
            callbacks(viewer, read_only_mouse_event(type=kind, pos=np.array(pos), button=1))
        mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", button=1))
        QApplication.processEvents()
        print(sorted(name for name in ("torch", "monai") if name in sys.modules))
        viewer.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"

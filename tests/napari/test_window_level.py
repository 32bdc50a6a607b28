"""Window/level drag on a ViewerModel, driven through napari's own mouse-callback machinery."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)

from napari_medai._napari.window_level import (
    MIN_WIDTH_FRACTION,
    Window,
    dragged_window,
    install,
)

CANVAS = (600, 800)  # (height, width) in screen pixels
#: A CT's values: air to dense bone, in HU; the span a full-canvas drag covers.
LOW, HIGH = -1000.0, 2000.0
SPAN = HIGH - LOW


def ct_volume() -> np.ndarray:
    data = np.full((5, 40, 50), 40, dtype=np.int16)
    data[:, 0, 0], data[:, -1, -1] = LOW, HIGH
    return data


@pytest.fixture
def viewer() -> ViewerModel:
    model = ViewerModel()
    model.canvas.size = CANVAS
    return model


def drag(viewer: ViewerModel, shift: tuple[float, float], modifiers=("Control",), button=1):
    """Press at the canvas centre, move by ``shift`` (x, y) in two steps, release.

    Returns whether a callback took the press from the camera (napari's test
    event has no ``handled`` until a callback sets it, and napari re-points the
    press event at each later one, so it is read at once).
    """
    start = np.array([400.0, 300.0])
    press = read_only_mouse_event(
        type="mouse_press", pos=start, modifiers=list(modifiers), button=button
    )
    mouse_press_callbacks(viewer, press)
    handled = getattr(press, "handled", False)
    for fraction in (0.5, 1.0):
        move = read_only_mouse_event(
            type="mouse_move",
            pos=start + fraction * np.asarray(shift),
            modifiers=list(modifiers),
            button=button,
            is_dragging=True,
        )
        mouse_move_callbacks(viewer, move)
    release = read_only_mouse_event(type="mouse_release", pos=start + shift, button=button)
    mouse_release_callbacks(viewer, release)
    return handled


def window_of(layer) -> Window:
    return Window.from_limits(layer.contrast_limits)


def test_horizontal_drag_sets_width_and_vertical_sets_level(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))  # level 40, width 400
    install(viewer)

    # A quarter of the canvas to the right and a tenth down.
    handled = drag(viewer, (200.0, 60.0))

    assert handled  # the camera never saw the press: no pan
    window = window_of(ct)
    assert window.width == pytest.approx(400 + SPAN / 4)
    assert window.level == pytest.approx(40 + SPAN / 10)

    drag(viewer, (-200.0, -60.0))
    assert window_of(ct).width == pytest.approx(400)
    assert window_of(ct).level == pytest.approx(40)


def test_the_window_stays_within_the_datas_range(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))
    install(viewer)

    drag(viewer, (-5000.0, 5000.0))  # far left and far down
    assert window_of(ct).width == pytest.approx(SPAN * MIN_WIDTH_FRACTION)
    assert window_of(ct).level == pytest.approx(HIGH)

    drag(viewer, (50_000.0, -50_000.0))
    assert window_of(ct).width == pytest.approx(SPAN)
    assert window_of(ct).level == pytest.approx(LOW)


def test_a_window_wider_than_the_data_does_not_jump_when_a_drag_starts():
    start = Window(level=3000.0, width=9000.0)
    assert dragged_window(start, (0.0, 0.0), CANVAS, (LOW, HIGH)) == start
    narrower = dragged_window(start, (-80.0, -60.0), CANVAS, (LOW, HIGH))
    assert narrower.width == pytest.approx(9000 - SPAN / 10)
    assert narrower.level == pytest.approx(3000 - SPAN / 10)


def test_speed_does_not_depend_on_zoom_or_slicing_orientation(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))
    install(viewer)
    viewer.dims.order = (2, 0, 1)  # sagittal-like: the first axis shown
    viewer.scene.camera.zoom = 7.5
    drag(viewer, (80.0, 0.0))
    assert window_of(ct).width == pytest.approx(400 + SPAN / 10)

    viewer.dims.ndisplay = 3
    drag(viewer, (80.0, 0.0))
    assert window_of(ct).width == pytest.approx(400 + 2 * SPAN / 10)


def test_a_plain_drag_pans_unless_the_mouse_mode_is_on(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))
    controller = install(viewer)
    assert install(viewer) is controller  # one per viewer

    handled = drag(viewer, (200.0, 0.0), modifiers=())
    assert not handled and window_of(ct).width == pytest.approx(400)

    controller.enabled = True
    handled = drag(viewer, (200.0, 0.0), modifiers=())
    assert handled and window_of(ct).width == pytest.approx(400 + SPAN / 4)

    # Other buttons and napari's own modifier drags (Alt zoom box, Shift plane) are left alone.
    for modifiers, button in ((("Alt",), 1), (("Shift",), 1), ((), 2)):
        handled = drag(viewer, (200.0, 0.0), modifiers=modifiers, button=button)
        assert not handled
    assert window_of(ct).width == pytest.approx(400 + SPAN / 4)


def test_a_painting_labels_layer_keeps_the_mouse(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))
    labels = viewer.add_labels(np.zeros((5, 40, 50), dtype=np.uint8))
    controller = install(viewer)
    controller.enabled = True
    labels.mode = "paint"  # the active layer

    handled = drag(viewer, (200.0, 60.0))
    assert not handled and window_of(ct) == Window(40.0, 400.0)

    labels.mode = "pan_zoom"  # the window reaches the only image while Labels is active
    drag(viewer, (200.0, 0.0))
    assert window_of(ct).width == pytest.approx(400 + SPAN / 4)


def test_values_are_described_in_the_scans_units(viewer):
    metadata = {"napari_medai": {"provenance": {"modality": "CT"}}}
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240), name="CT", metadata=metadata)
    mr = viewer.add_image(np.ones((5, 40, 50), np.float32), contrast_limits=(0, 2), name="T1")
    controller = install(viewer)
    viewer.layers.selection = {ct}

    drag(viewer, (200.0, 60.0))

    assert controller.describe(ct) == "CT: level 340 HU, width 1150 HU"
    assert controller.describe(mr) == "T1: level 1, width 2"  # MR values have no unit


def test_several_selected_images_each_move_within_their_own_range(viewer):
    ct = viewer.add_image(ct_volume(), contrast_limits=(-160, 240))
    mr = viewer.add_image(
        np.linspace(0, 500, 5 * 40 * 50, dtype=np.float32).reshape(5, 40, 50),
        contrast_limits=(100, 300),
    )
    viewer.layers.selection = {ct, mr}
    install(viewer)

    drag(viewer, (80.0, 0.0))

    assert window_of(ct).width == pytest.approx(400 + SPAN / 10)
    assert window_of(mr).width == pytest.approx(200 + 500 / 10)


def test_without_an_image_to_act_on_the_drag_is_left_to_napari(viewer):
    viewer.add_image(ct_volume())
    viewer.add_image(ct_volume())
    labels = viewer.add_labels(np.zeros((5, 40, 50), dtype=np.uint8))
    viewer.layers.selection = {labels}
    install(viewer)
    assert not drag(viewer, (80.0, 0.0))

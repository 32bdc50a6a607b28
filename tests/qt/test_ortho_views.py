"""Orthogonal views dock: linked slices, crosshair, painting in a side view, aspect, 4D.

Clicks and strokes go through the side canvases' vispy events, as a mouse
would, so napari's own screen-to-world mapping and painting are exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Layer
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._napari.ortho import LinkedLabels, crosshair_segments, plane_order
from napari_medai._qt.ortho_views import HINT, OrthoViewsWidget
from napari_medai.core.geometry import Geometry
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import LabelMap, Volume

#: 6 mm slices, 1 mm pixels, stored along RAS as NIfTI converters write (x and y flipped in LPS).
SPACING = (6.0, 1.0, 1.0)
GEOMETRY = Geometry(SPACING, (-30.0, 20.0, 25.0), np.diag([1.0, -1.0, -1.0]))
SHAPE = (10, 40, 50)


def scan(shape=SHAPE, geometry=GEOMETRY) -> tuple[Volume, LabelMap]:
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=shape).astype(np.float32), geometry, {"modality": "CT"})
    return image, LabelMap(np.zeros(shape, np.uint8), geometry, {}, {1: "liver", 2: "spleen"})


@pytest.fixture
def ortho(make_napari_viewer, qtbot):
    """A viewer with an anisotropic scan and an empty label map, and the docked views."""
    viewer = make_napari_viewer(show=True)  # canvases need a size to map clicks
    image, labels = scan()
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    viewer.add_layer(Layer.create(*labels_layer_data(labels, "annotation")))
    widget = OrthoViewsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Orthogonal views")
    qtbot.waitUntil(lambda: all(qt.isVisible() for qt in widget.qt_viewers))
    return viewer, widget


def view_named(widget: OrthoViewsWidget, plane: str):
    index = widget.link.planes.index(plane)
    return widget.side_viewers[index], widget.qt_viewers[index]


def canvas_pixel(qt_viewer, world) -> tuple[float, float]:
    """Where a world point (the view's axes) is drawn on its canvas, in pixels."""
    QApplication.processEvents()  # the dock fits its canvases once shown: let that happen first
    row, col = qt_viewer.viewer.dims.displayed
    canvas = qt_viewer.canvas
    transform = canvas.view.scene.node_transform(canvas._scene_canvas.scene)
    x, y = transform.map([world[col], world[row], 0, 1])[:2]
    return round(float(x)), round(float(y))  # a mouse reports whole pixels


def send_mouse(qt_viewer, kind, pixel, buttons) -> None:
    """A Qt mouse event on the canvas widget, as a real mouse sends it."""
    button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
    event = QMouseEvent(kind, QPointF(*pixel), button, buttons, Qt.KeyboardModifier.NoModifier)
    QTest.qWait(15)  # vispy drops a mouse move within 10 ms of the last one
    QApplication.sendEvent(qt_viewer.canvas.native, event)


def press(qt_viewer, world, *, drag_to=()) -> None:
    """Press, optionally drag through world points, and release the left button."""
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    start = canvas_pixel(qt_viewer, world)
    send_mouse(qt_viewer, QEvent.Type.MouseMove, start, none)
    assert np.allclose(qt_viewer.viewer.cursor.position, world, atol=0.5), "pixel mapping is off"
    send_mouse(qt_viewer, QEvent.Type.MouseButtonPress, start, left)
    end = start
    for target in drag_to:
        end = canvas_pixel(qt_viewer, target)
        send_mouse(qt_viewer, QEvent.Type.MouseMove, end, left)
    send_mouse(qt_viewer, QEvent.Type.MouseButtonRelease, end, none)


def voxel_world(layer, index) -> np.ndarray:
    return np.asarray(layer.data_to_world(index), dtype=float)


def test_side_views_show_coronal_and_sagittal_head_up(ortho):
    viewer, widget = ortho
    assert widget.link.planes == ("coronal", "sagittal")
    coronal, _ = view_named(widget, "coronal")
    sagittal, _ = view_named(widget, "sagittal")
    assert coronal.dims.order == plane_order(3, "coronal") == (1, 0, 2)
    assert sagittal.dims.order == plane_order(3, "sagittal") == (2, 0, 1)
    for side in (coronal, sagittal):
        assert side.scene.camera.orientation2d[0] == "up"
        assert [type(layer) for layer in side.layers][1] is LinkedLabels
        assert side.layers[1].data is viewer.layers[1].data


def test_click_in_coronal_moves_the_axial_and_sagittal_slices(ortho):
    viewer, widget = ortho
    labels = viewer.layers[1]
    coronal, qt_coronal = view_named(widget, "coronal")
    sagittal, _ = view_named(widget, "sagittal")
    target = voxel_world(labels, (7, 12, 31))  # a voxel in the coronal plane shown
    target[1] = coronal.dims.point[1]
    press(qt_coronal, target)
    # The main (axial) view now shows the clicked slice, the sagittal view the clicked column.
    assert viewer.dims.current_step[0] == 7
    assert np.isclose(sagittal.dims.point[2], target[2])
    assert labels.world_to_data(sagittal.dims.point)[2] == pytest.approx(31)
    assert np.allclose(widget.link.point[[0, 2]], target[[0, 2]])
    # The axial crosshair crosses at the clicked column, the sagittal one at the clicked slice.
    axial_lines = crosshair_segments(viewer, widget.link.view_point(viewer))
    assert np.isclose(axial_lines[2, 0], target[2])
    sagittal_lines = crosshair_segments(sagittal, widget.link.view_point(sagittal))
    assert np.isclose(sagittal_lines[0, 1], target[0])


def test_a_drag_pans_and_leaves_the_crosshair(ortho):
    viewer, widget = ortho
    coronal, qt_coronal = view_named(widget, "coronal")
    before = widget.link.point.copy()
    start = before.copy()
    press(qt_coronal, start, drag_to=[start + [12.0, 0.0, 15.0]])
    assert np.array_equal(widget.link.point, before)


def test_scrolling_a_side_view_moves_the_crosshair_in_the_others(ortho):
    viewer, widget = ortho
    coronal, _ = view_named(widget, "coronal")
    sagittal, _ = view_named(widget, "sagittal")
    main_step = viewer.dims.current_step
    coronal.dims.set_current_step(1, 5)
    p = coronal.dims.point[1]
    assert widget.link.point[1] == p
    # P is displayed in the axial and sagittal views: their slices stay, their crosshair moves.
    assert viewer.dims.current_step[0] == main_step[0]
    assert np.isclose(crosshair_segments(viewer, widget.link.view_point(viewer))[0, 1], p)
    assert np.isclose(crosshair_segments(sagittal, widget.link.view_point(sagittal))[2, 0], p)
    # An axial scroll reaches the side views' crosshair the same way.
    viewer.dims.set_current_step(0, 2)
    assert np.isclose(widget.link.point[0], viewer.dims.point[0])


def test_a_side_scroll_moves_the_crosshair_without_redrawing_the_main_scene(ortho, qtbot):
    # Redrawing a full-screen canvas is the largest cost of a slice step under software
    # OpenGL (bench/ortho_views.py): a crosshair move repaints two lines over the canvas.
    viewer, widget = ortho
    coronal, _ = view_named(widget, "coronal")
    main_canvas = viewer.window._qt_viewer.canvas
    crosshair = next(c for c in widget.crosshairs if c.viewer is viewer)
    qtbot.wait(100)  # let the first draws after docking happen
    draws = []
    main_canvas._scene_canvas.events.draw.connect(draws.append)
    coronal.dims.set_current_step(1, 5)
    qtbot.wait(300)  # a canvas update would have been drawn by now
    assert not draws
    # The horizontal line is drawn at the new coronal slice, on the pixel napari maps it to.
    point = widget.link.view_point(viewer)
    pixels = crosshair.pixel_segments()
    assert np.allclose(pixels[:2, 1], canvas_pixel(viewer.window._qt_viewer, point)[1], atol=1)
    assert crosshair.geometry() == main_canvas.native.rect()


def test_a_resized_side_view_is_fitted_again_unless_the_user_zoomed(ortho, qtbot):
    # Another dock added below, or a wider dock, resizes the side canvases after their fit:
    # the scan must not be cut off, but a view the user zoomed keeps its zoom.
    viewer, widget = ortho
    coronal, qt_coronal = view_named(widget, "coronal")
    sagittal, qt_sagittal = view_named(widget, "sagittal")
    qtbot.wait(100)
    sagittal.scene.camera.zoom *= 2
    zoomed = sagittal.scene.camera.zoom
    dock = widget.parentWidget()
    dock.setFixedWidth(dock.width() + 150)
    qtbot.waitUntil(lambda: qt_coronal.canvas.native.width() > 200, timeout=2000)
    qtbot.wait(200)
    shown = coronal.scene.camera.zoom
    coronal.reset_view()  # what a fit at this size gives
    assert shown == pytest.approx(coronal.scene.camera.zoom)
    assert sagittal.scene.camera.zoom == zoomed


def test_painting_in_the_sagittal_view_paints_the_users_layer(ortho):
    viewer, widget = ortho
    labels = viewer.layers[1]
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    labels.brush_size = 1
    labels.selected_label = 2
    sagittal, qt_sagittal = view_named(widget, "sagittal")
    copy = sagittal.layers[1]
    assert (copy.mode, copy.selected_label, copy.brush_size) == ("paint", 2, 1)
    painted = []
    labels.events.paint.connect(painted.append)
    column = labels.world_to_data(sagittal.dims.point)[2]
    start = voxel_world(labels, (3, 10, column))
    end = voxel_world(labels, (3, 14, column))
    press(qt_sagittal, start, drag_to=[end])
    expected = np.zeros(SHAPE, bool)
    expected[3, 10:15, round(column)] = True
    assert np.array_equal(labels.data == 2, expected)
    assert np.count_nonzero(labels.data) == 5
    # One stroke is one step of the user's layer's history: Ctrl+Z in the main view undoes it.
    assert len(painted) == 1
    labels.undo()
    assert not labels.data.any()
    copy.redo()
    assert np.array_equal(labels.data == 2, expected)


def test_edits_in_one_view_redraw_the_others(ortho, qtbot):
    viewer, widget = ortho
    labels = viewer.layers[1]
    copies = widget.link.copies(labels)
    redrawn = []
    for copy in copies:
        copy.events.set_data.connect(lambda event: redrawn.append(event.source))
    labels.data[4, 10:20, 10:20] = 1  # as a model writing into the user's layer does
    labels.refresh()
    qtbot.waitUntil(lambda: set(redrawn) == set(copies), timeout=2000)
    # A slice scroll in the main view is not an edit: no extra redraw of the side views.
    redrawn.clear()
    viewer.dims.set_current_step(0, 1)
    qtbot.wait(200)
    assert redrawn == []


def test_display_properties_follow_both_ways(ortho):
    viewer, widget = ortho
    labels = viewer.layers[1]
    labels.opacity = 0.25
    assert [copy.opacity for copy in widget.link.copies(labels)] == [0.25, 0.25]
    widget.link.copies(labels)[1].selected_label = 2  # a key pressed over a side view
    assert labels.selected_label == 2
    assert widget.link.copies(labels)[0].selected_label == 2


def test_side_views_honour_the_spacing(ortho):
    """6 mm slices must look six times as tall as 1 mm pixels are wide (not squashed)."""
    _viewer, widget = ortho
    for plane in ("coronal", "sagittal"):
        side, qt_viewer = view_named(widget, plane)
        node = qt_viewer.canvas.layer_to_visual[side.layers[0]].node
        to_canvas = node.get_transform("visual", "canvas")
        origin, down, across = to_canvas.map([[0, 0, 0, 1], [0, 1, 0, 1], [1, 0, 0, 1]])[:, :2]
        slice_px = np.linalg.norm(down - origin)
        pixel_px = np.linalg.norm(across - origin)
        assert slice_px / pixel_px == pytest.approx(SPACING[0] / SPACING[2], rel=1e-6)
        # Head at the top: a higher slice index (towards S) is drawn higher on the screen.
        assert down[1] < origin[1]


def test_a_4d_series_keeps_time_linked_and_paints_its_own_frame(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    shape = (3, *SHAPE)
    geometry = GEOMETRY
    image = Volume(np.zeros(shape, np.float32), geometry, {"modality": "MR"})
    _data, kwargs, _kind = image_layer_data(image)
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    spatial = {key: kwargs[key] for key in ("affine", "units", "axis_labels")}
    layer = viewer.add_labels(np.zeros(shape, np.uint8), name="annotation", **spatial)
    widget = OrthoViewsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Orthogonal views")
    qtbot.waitUntil(lambda: all(qt.isVisible() for qt in widget.qt_viewers))
    coronal, qt_coronal = view_named(widget, "coronal")
    assert coronal.dims.order == (0, 2, 1, 3)
    viewer.dims.set_current_step(0, 2)
    assert all(side.dims.current_step[0] == 2 for side in widget.side_viewers)
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    layer.brush_size = 1
    layer.selected_label = 1
    target = voxel_world(layer, (2, 6, round(layer.world_to_data(coronal.dims.point)[2]), 20))
    press(qt_coronal, target)
    assert np.count_nonzero(layer.data) == 1
    assert layer.data[2].any() and not layer.data[:2].any()
    layer.mode = "pan_zoom"
    press(qt_coronal, target)
    assert viewer.dims.current_step[1] == 6
    assert viewer.dims.current_step[0] == 2


def test_an_oblique_scan_is_named_in_the_note(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = OrthoViewsWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.note.text() == HINT
    image, _labels = make_phantom(shape=(12, 32, 32))  # turned 10 degrees about S
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    assert "turned 10.0 degrees" in widget.note.text()
    assert "phantom CT" in widget.note.text()
    viewer.layers.clear()
    assert widget.note.text() == HINT


def test_closing_the_dock_unlinks_it(ortho):
    viewer, widget = ortho
    viewer.window.remove_dock_widget(widget)
    counts = [len(side.layers) for side in widget.side_viewers]
    image, _labels = scan()
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    viewer.dims.set_current_step(0, 3)
    assert [len(side.layers) for side in widget.side_viewers] == counts
    assert widget.link._click not in viewer.mouse_drag_callbacks


def test_docked_from_the_manifest_it_crosses_the_main_canvas_and_names_its_axes(
    make_napari_viewer, qtbot, recwarn
):
    # napari hands a plugin's dock a public-only proxy of the viewer: the main canvas must
    # still be found (its crosshair drawn) without napari's private-attribute warning, and
    # each side slider must show its whole axis label ("P (y)"), not napari's elided "P …".
    from qtpy.QtWidgets import QLineEdit

    viewer = make_napari_viewer(show=True)
    image, labels = scan()
    viewer.add_layer(Layer.create(*image_layer_data(image)))
    viewer.add_layer(Layer.create(*labels_layer_data(labels, "annotation")))
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Orthogonal views")
    qtbot.waitUntil(lambda: all(qt.isVisible() for qt in widget.qt_viewers))
    qtbot.wait(200)  # the dock's layout settles
    main_canvas = viewer.window._qt_viewer.canvas
    assert any(crosshair.canvas is main_canvas for crosshair in widget.crosshairs)
    assert not [w for w in recwarn if "Private attribute access" in str(w.message)]
    for qt_viewer in widget.qt_viewers:
        shown = [slider for slider in qt_viewer.dims.slider_widgets if slider.isVisible()]
        assert shown
        for slider in shown:
            assert QLineEdit.text(slider.axis_label) == slider.axis_label.text() != ""

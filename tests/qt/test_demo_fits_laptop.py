"""The demo's window fits a 1366x768 laptop screen with every dock open, the canvas largest."""

from __future__ import annotations

import launch_demo as launch
from qtpy.QtWidgets import QApplication

from napari_medai._qt.parts import DetailsView

SCREEN = (1366, 768)
#: The issue's floor for the image: a canvas smaller than this is a strip, not a viewer.
CANVAS = (400, 300)


def _settle() -> None:
    for _ in range(10):
        QApplication.processEvents()


def _fits(viewer) -> tuple[tuple[int, int], tuple[int, int]]:
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    _settle()
    canvas = viewer.window._qt_viewer.canvas.native
    return (window.width(), window.height()), (canvas.width(), canvas.height())


def test_every_dock_open_fits_a_laptop_screen_and_leaves_the_canvas_room(
    make_napari_viewer, monkeypatch
):
    monkeypatch.setattr(launch, "Viewer", lambda **kwargs: make_napari_viewer(show=True))
    viewer, _ = launch.open_viewer(docks=None)  # every dock, tabbed as the demo tabs them
    window_size, canvas_size = _fits(viewer)
    assert window_size == SCREEN, f"the window grew to {window_size}"
    assert canvas_size[0] >= CANVAS[0] and canvas_size[1] >= CANVAS[1], canvas_size

    for details in viewer.window._qt_window.findChildren(DetailsView):
        details.expand(animate=False)  # results views scroll instead of growing the window
    window_size, canvas_size = _fits(viewer)
    assert window_size == SCREEN, f"expanded views grew the window to {window_size}"
    assert canvas_size[0] >= CANVAS[0] and canvas_size[1] >= CANVAS[1], canvas_size


def test_long_details_scroll_inside_a_bounded_height(qtbot):
    details = DetailsView()
    qtbot.addWidget(details)
    details.show_rows([(f"row {k}", "a value " * 8) for k in range(60)])
    details.expand(animate=False)
    details.show()
    qtbot.waitExposed(details)
    header = details.sizeHint().height() - DetailsView.MAX_HEIGHT
    assert header < 80  # the rest is the bounded, scrolling view of 60 rows

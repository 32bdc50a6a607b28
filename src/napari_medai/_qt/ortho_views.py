"""Dock widget: the two orthogonal planes the main canvas does not show, linked to it.

With the main canvas on the axial plane, the dock shows coronal (top) and
sagittal (bottom) views of the same Image and Labels layers, as ITK-SNAP and
3D Slicer lay a scan out. The linking itself (shared data, one undo history,
one crosshair) lives in :mod:`napari_medai._napari.ortho`; this module gives
each side viewer a canvas, draws the crosshair over all three canvases and
refreshes the other views once a brush stroke pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from napari.components import ViewerModel
from napari.qt import QtViewer
from qtpy.QtCore import QEvent, QPointF, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QApplication, QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

from napari_medai._napari.ortho import OrthoLink, crosshair_segments, tilt_problem

if TYPE_CHECKING:
    import napari

#: Other views redraw an edit once the stroke pauses this long (ms): each dab of a stroke
#: redraws only the canvas painted on (with software OpenGL a canvas costs a frame's worth).
REFRESH_INTERVAL_MS = 50
#: The dock's narrowest useful width (px): two readable canvases on a 1366x768 screen.
DOCK_MIN_WIDTH = 320
#: Crosshair colour (RGBA): the yellow 3D Slicer uses, slightly see-through.
CROSSHAIR_COLOUR = (1.0, 0.85, 0.1, 0.75)
HINT = (
    "Click (pan/zoom mode) in any view to move the crosshair; paint in any view. "
    "Ctrl+scroll or the slider changes a view's slice."
)


class Crosshair(QWidget):
    """Two lines through the linked point, painted over one napari canvas.

    A transparent Qt widget on top of the canvas rather than a vispy visual in
    its scene: moving the crosshair then repaints two lines, not the canvas's
    whole scene (with software OpenGL, redrawing a full-screen canvas is the
    largest cost of a slice step; see bench/ortho_views.py).
    """

    def __init__(self, canvas: object, viewer: ViewerModel) -> None:
        super().__init__(canvas.native)
        self.canvas = canvas
        self.viewer = viewer
        self.segments: np.ndarray | None = None
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_TranslucentBackground)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.setGeometry(canvas.native.rect())
        canvas.native.installEventFilter(self)
        camera = viewer.scene.camera.events
        for emitter in (camera.center, camera.zoom, camera.orientation):
            emitter.connect(self._on_camera)
        self.show()

    def show_at(self, point: Sequence[float]) -> None:
        """Put the lines through ``point`` (the viewer's world axes), or hide them."""
        self.segments = crosshair_segments(self.viewer, point)
        self.update()

    def pixel_segments(self) -> np.ndarray | None:
        """The lines' end points in this widget's pixels, (4, 2), or None when hidden."""
        if self.segments is None:
            return None
        view = self.canvas.view
        to_canvas = view.transform * view.scene.transform  # as napari maps clicks, inverted
        return np.asarray(to_canvas.map(self.segments))[:, :2]

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt's name)
        """Draw the two lines."""
        pixels = self.pixel_segments()
        if pixels is None:
            return
        painter = QPainter(self)
        painter.setPen(QPen(QColor.fromRgbF(*CROSSHAIR_COLOUR), 1))
        for start, end in pixels.reshape(2, 2, 2):
            painter.drawLine(QPointF(*start), QPointF(*end))
        painter.end()

    def eventFilter(self, watched: object, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        """Cover the canvas when it is resized."""
        if event.type() == QEvent.Type.Resize:
            self.setGeometry(self.canvas.native.rect())
        return False

    def _on_camera(self, _event: object = None) -> None:
        self.update()

    def remove(self) -> None:
        """Take the lines off their canvas."""
        camera = self.viewer.scene.camera.events
        for emitter in (camera.center, camera.zoom, camera.orientation):
            emitter.disconnect(self._on_camera)
        self.canvas.native.removeEventFilter(self)
        self.hide()
        self.deleteLater()


def _main_canvas(viewer: napari.viewer.Viewer) -> object | None:
    """The main window's vispy canvas: its QtViewer's, found among the application's widgets.

    napari has no public handle to it, and ``Window._qt_viewer`` warns of its removal in a
    plugin's widget; ``QtViewer`` and its ``canvas`` are public. A dock gets the viewer
    wrapped in napari's public-only proxy, so the comparison is with what it wraps.
    """
    target = getattr(viewer, "__wrapped__", viewer)
    for window in QApplication.topLevelWidgets():
        for qt_viewer in window.findChildren(QtViewer):
            if qt_viewer.viewer is target:
                return qt_viewer.canvas
    return None


def _release(link: OrthoLink, qt_viewers: list[QtViewer], _object: object = None) -> None:
    """Unlink and close the side canvases (napari counts an open QtViewer as a leak)."""
    if link.linked:
        link.disconnect()
    while qt_viewers:
        qt_viewers.pop().close()


def _view_change_emitters(viewer: ViewerModel) -> tuple:
    """Dims events after which a crosshair must be drawn again (the point has its own)."""
    events = viewer.dims.events
    return events.order, events.ndisplay, events.range


def _camera_state(view: ViewerModel) -> tuple:
    """What a pan or zoom changes: the camera's centre and zoom."""
    camera = view.scene.camera
    return tuple(camera.center), camera.zoom


class OrthoViewsWidget(QWidget):
    """Coronal and sagittal canvases (or whichever two planes the main view does not show)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        self.side_viewers = [ViewerModel(title=f"orthogonal view {i + 1}") for i in range(2)]
        self.qt_viewers = [QtViewer(model) for model in self.side_viewers]
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(REFRESH_INTERVAL_MS)
        self.link = OrthoLink(napari_viewer, self.side_viewers, on_stale=self._flush_timer.start)
        self._flush_timer.timeout.connect(self.link.flush)
        self.crosshairs = [Crosshair(qt.canvas, qt.viewer) for qt in self.qt_viewers]
        main_canvas = _main_canvas(napari_viewer)
        if main_canvas is not None:
            self.crosshairs.append(Crosshair(main_canvas, napari_viewer))
        self.note = QLabel(HINT)
        self.note.setWordWrap(True)
        self.note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        splitter = QSplitter(Qt.Orientation.Vertical)
        for qt_viewer in self.qt_viewers:
            qt_viewer.setMinimumSize(160, 160)
            splitter.addWidget(qt_viewer)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter, stretch=1)
        layout.addWidget(self.note)
        self.link.events.point.connect(self._draw_crosshairs)
        self.link.events.planes.connect(self._on_planes)
        for view in self.link.views:
            for emitter in _view_change_emitters(view):
                emitter.connect(self._draw_crosshairs)
        napari_viewer.layers.events.inserted.connect(self._update_note)
        napari_viewer.layers.events.removed.connect(self._update_note)
        self._linked = True
        self._shown = False
        # Each side view's camera (centre, zoom) as last fitted: one the user has not moved
        # since is fitted again when its canvas is resized (a dock added below, a new width).
        self._fitted: dict[int, tuple] = {}
        self._refit_timer = QTimer(self, singleShot=True, interval=0)
        self._refit_timer.timeout.connect(self._refit_unmoved)
        for qt_viewer in self.qt_viewers:
            qt_viewer.canvas.native.installEventFilter(self)
            qt_viewer.dims.installEventFilter(self)
        # Also when the main window deletes the dock with itself (no Python method may run then).
        self.destroyed.connect(partial(_release, self.link, self.qt_viewers))
        self._on_planes()

    def _on_planes(self, _event: object = None) -> None:
        self._remember_fits()
        for model, plane in zip(self.side_viewers, self.link.planes, strict=True):
            overlay = model.canvas.overlays["text"]
            overlay.text = plane.capitalize()
            overlay.position = "top_left"
            overlay.visible = True
        self._draw_crosshairs()
        self._update_note()
        self._size_hidden_sliders()

    def _draw_crosshairs(self, _event: object = None) -> None:
        for crosshair in self.crosshairs:
            crosshair.show_at(self.link.view_point(crosshair.viewer))

    def _update_note(self, _event: object = None) -> None:
        problems = [tilt_problem(layer) for layer in self._viewer.layers]
        shown = [problem for problem in problems if problem]
        self.note.setText(shown[0] if shown else HINT)
        self.note.setToolTip("\n".join(shown) if shown else "")

    def unlink(self) -> None:
        """Stop following the main viewer and take the crosshair off its canvas."""
        if not self._linked:
            return
        self._linked = False
        self._flush_timer.stop()
        self._refit_timer.stop()
        for crosshair in self.crosshairs:
            crosshair.remove()
        for view in self.link.views:
            for emitter in _view_change_emitters(view):
                emitter.disconnect(self._draw_crosshairs)
        self._viewer.layers.events.inserted.disconnect(self._update_note)
        self._viewer.layers.events.removed.disconnect(self._update_note)
        _release(self.link, self.qt_viewers)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """A quarter of the screen's width, so the main canvas keeps the larger share."""
        screen = QApplication.primaryScreen()
        width = screen.availableGeometry().width() if screen is not None else 1366
        return QSize(max(DOCK_MIN_WIDTH, width // 4), super().sizeHint().height())

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Once docked, fit every canvas again: docking has just resized them all."""
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            QTimer.singleShot(0, self._fit_all)

    def _fit_all(self) -> None:
        for view in self.link.views:
            view.reset_view()
        self._remember_fits()

    def _remember_fits(self) -> None:
        self._fitted = {id(view): _camera_state(view) for view in self.side_viewers}

    def _refit_unmoved(self) -> None:
        """Fit again the side views whose camera the user has not panned or zoomed."""
        for view in self.side_viewers:
            if self._fitted.get(id(view)) == _camera_state(view):
                view.reset_view()
                self._fitted[id(view)] = _camera_state(view)

    def _size_hidden_sliders(self) -> None:
        """Give each side view's hidden sliders the width of its slider bar.

        napari caps every axis label ("P (y)") at a fifth of the first slider's width; in a
        side view that slider is hidden, so never laid out, and the label would read "P …".
        """
        for qt_viewer in self.qt_viewers:
            dims = qt_viewer.dims
            for slider in dims.slider_widgets:
                if slider.isHidden():
                    slider.resize(dims.width(), slider.height())

    def eventFilter(self, watched: object, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        """A side canvas resized: fit its view again; a side slider bar: size its hidden sliders."""
        if event.type() != QEvent.Type.Resize or not self._linked:
            return False
        if any(watched is qt_viewer.dims for qt_viewer in self.qt_viewers):
            self._size_hidden_sliders()
        else:
            self._refit_timer.start()
        return False

    def event(self, event: QEvent) -> bool:
        """Unlink when napari takes the widget out of its dock (closing the dock)."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.unlink()
        return super().event(event)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Unlink from the main viewer before the canvases go."""
        self.unlink()
        super().closeEvent(event)

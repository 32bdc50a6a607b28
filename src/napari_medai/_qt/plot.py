"""A small live line plot for the docks, drawn in napari's theme colours.

Points may arrive many times a second while the GUI thread must stay
responsive (issue 4: event-loop stalls under 100 ms; issue 11: p99 under
20 ms). matplotlib draws each frame in a helper process
(:mod:`~napari_medai._qt.plot_render`, which says why not a thread), fed by
one helper thread here, and the GUI thread only shows the finished image. A
timer asks for at most ``max_fps`` frames a second, one at a time, and only
when something changed; the GUI thread hands over a snapshot of the points and
the theme colours.

Why not pyqtgraph: it is not installed, and it paints on the GUI thread; this
costs the GUI thread one ``QPixmap`` swap a frame.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from napari_medai._qt.plot_render import Colours, Frame, Scene, Series, read_frame, render

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: The least height of the plot, so that several docks do not squash it flat.
MIN_HEIGHT_PX = 160
#: Height asked for when there is room.
PREFERRED_HEIGHT_PX = 200
STYLES = ("line", "points", "line+points")
AXES = ("left", "right")
#: Series colours, readable on both the dark and the light napari theme.
PALETTE = ("#f28e2b", "#4e9fe6", "#59a14f", "#e15759", "#b07aa1", "#9c755f")
#: Renderer processes that die are restarted this often, then frames are drawn here.
_MAX_RESTARTS = 3


class _Renderer:
    """The helper process drawing every plot's frames; started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._starts = 0
        self._cache: dict[str, Any] = {}

    def warm_up(self) -> None:
        """Start the process (it imports matplotlib) before the first frame is wanted."""
        with self._lock:
            self._running()

    def render(self, scene: Scene) -> Frame:
        """Draw ``scene`` in the process; here, if the process cannot run."""
        with self._lock:
            while (process := self._running()) is not None:
                try:
                    process.stdin.write(scene.to_json().encode() + b"\n")
                    process.stdin.flush()
                    return read_frame(process.stdout)
                except (OSError, EOFError) as error:
                    logger.warning("plot renderer process failed (%s); restarting it", error)
                    self._stop()
            return render(scene, self._cache)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen | None:
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._starts >= _MAX_RESTARTS:
            return None
        self._starts += 1
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "napari_medai._qt.plot_render"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"},
            )
        except OSError as error:
            logger.warning("cannot start the plot renderer (%s); drawing in a thread", error)
            self._starts = _MAX_RESTARTS
            return None
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()


_RENDERER = _Renderer()
atexit.register(_RENDERER.close)
# One helper thread feeds the renderer for every plot; it waits on the pipe, not the GIL.
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-plot")


def theme_colours(theme_id: str = "dark") -> Colours:
    """The colours of napari's theme ``theme_id``."""
    from napari.utils.theme import get_theme

    theme = get_theme(theme_id)
    return Colours(
        background=theme.background.as_hex(),
        text=theme.text.as_hex(),
        lines=theme.highlight.as_hex(),
        marker=theme.current.as_hex(),
    )


class LivePlot(QWidget):
    """Named series against a common x, on a left and optionally a right y axis.

    Shows ``empty_text`` until a series has a point. Follows ``viewer``'s theme
    (the dark theme without a viewer). A click (or drag) inside the axes emits
    :attr:`clicked` with the x of the data under the mouse.
    """

    #: The data x under a click or drag inside the axes.
    clicked = Signal(float)

    def __init__(
        self,
        viewer: napari.viewer.Viewer | None = None,
        *,
        x_label: str,
        y_label: str,
        empty_text: str,
        right_y_label: str | None = None,
        y_range: tuple[float, float] | None = None,
        right_y_range: tuple[float, float] | None = None,
        max_fps: float = 5.0,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._x_label, self._y_label, self._right_y_label = x_label, y_label, right_y_label
        self._y_range, self._right_y_range = y_range, right_y_range
        self._empty_text = empty_text
        self._series: dict[str, Series] = {}
        self._marker_x: float | None = None
        self._colours = theme_colours(viewer.theme if viewer is not None else "dark")
        self._dirty = True
        self._frame: Frame | None = None
        self._pending: Future[Frame] | None = None
        _EXECUTOR.submit(_RENDERER.warm_up)
        #: Frames shown so far.
        self.redraws = 0
        self._view = QLabel()
        self._view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._view.setWordWrap(True)
        self._view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumSize(200, MIN_HEIGHT_PX)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._view)
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(1000.0 / max_fps)))
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)
        self._show_empty()

    def sizeHint(self):  # noqa: N802 (Qt's name)
        hint = super().sizeHint()
        hint.setHeight(PREFERRED_HEIGHT_PX)
        return hint

    # Data -----------------------------------------------------------------------------

    def set_series(
        self,
        name: str,
        xs,
        ys,
        *,
        axis: str = "left",
        style: str = "line",
        label: str | None = None,
    ) -> None:
        """Replace (or add) the series ``name``; ``label`` is its legend entry."""
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, not {axis!r}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, not {style!r}")
        xs, ys = [float(x) for x in xs], [float(y) for y in ys]
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
        old = self._series.get(name)
        colour = old.colour if old is not None else PALETTE[len(self._series) % len(PALETTE)]
        self._series[name] = Series(xs, ys, axis, style, name if label is None else label, colour)
        self._changed()

    def append(self, name: str, x: float, y: float) -> None:
        """Add one point to the series ``name`` (made with default options if new)."""
        if name not in self._series:
            self.set_series(name, [], [])
        series = self._series[name]
        series.xs.append(float(x))
        series.ys.append(float(y))
        self._changed()

    def series(self, name: str) -> list[tuple[float, float]]:
        """The (x, y) points of the series ``name`` (empty if there is none)."""
        series = self._series.get(name)
        return [] if series is None else list(zip(series.xs, series.ys, strict=True))

    def clear(self) -> None:
        """Forget every point and the marker, keep each series' options; shows the empty state."""
        for series in self._series.values():
            series.xs.clear()
            series.ys.clear()
        self._marker_x = None
        self._changed()

    def set_marker_x(self, x: float | None) -> None:
        """Draw a vertical cursor at ``x`` (e.g. the displayed slice); None hides it."""
        if x != self._marker_x:
            self._marker_x = None if x is None else float(x)
            self._changed()

    @property
    def marker_x(self) -> float | None:
        """Where the vertical cursor is, or None."""
        return self._marker_x

    @property
    def is_empty(self) -> bool:
        """Whether no series has a point (the empty text shows)."""
        return not any(series.xs for series in self._series.values())

    @property
    def empty_text(self) -> str:
        """The text shown while there is no data."""
        return self._empty_text

    @property
    def colours(self) -> Colours:
        """The theme colours the plot is drawn in."""
        return self._colours

    def axes_rect(self) -> QRectF | None:
        """Where the axes are in the shown frame, in widget coordinates; None if none shown."""
        if self._frame is None or self.is_empty:
            return None
        left, top, width, height = self._frame.axes
        offset = self._view.geometry().topLeft()
        image_w = self._frame.width / self.devicePixelRatioF()
        image_h = self._frame.height / self.devicePixelRatioF()
        # The label centres the pixmap when it is smaller than the label.
        dx = offset.x() + (self._view.width() - image_w) / 2
        dy = offset.y() + (self._view.height() - image_h) / 2
        return QRectF(left + dx, top + dy, width, height)

    # Events -----------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        if self.is_empty:
            self._show_empty()

    def _on_theme(self, _event: Any = None) -> None:
        if self._viewer is not None:
            self._colours = theme_colours(self._viewer.theme)
        self._changed()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._dirty = True

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self._emit_click(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._emit_click(event)

    def _emit_click(self, event) -> None:
        rect = self.axes_rect()
        if rect is None or event.button() not in (
            Qt.MouseButton.LeftButton,
            Qt.MouseButton.NoButton,
        ):
            return
        position = event.position() if hasattr(event, "position") else event.localPos()
        if not rect.contains(position):
            return
        x0, x1 = self._frame.x_range
        self.clicked.emit(x0 + (position.x() - rect.left()) / rect.width() * (x1 - x0))

    # Rendering ------------------------------------------------------------------------

    def _show_empty(self) -> None:
        background, text = self._colours.background, self._colours.text
        self._view.setStyleSheet(f"background-color: {background}; color: {text};")
        self._view.setText(self._empty_text)

    def _tick(self) -> None:
        """Show a finished frame; start the next render if something changed."""
        if self._pending is not None:
            if not self._pending.done():
                return
            pending, self._pending = self._pending, None
            try:
                frame = pending.result()
            except Exception:  # a failed frame is logged; the next change draws again
                logger.exception("drawing the plot failed")
            else:
                if not self.is_empty:
                    self._show(frame)
        if not self._dirty or self.is_empty:
            return
        self._dirty = False
        scene = Scene(
            series=tuple(
                Series(list(s.xs), list(s.ys), s.axis, s.style, s.label, s.colour)
                for s in self._series.values()
            ),
            colours=self._colours,
            x_label=self._x_label,
            y_label=self._y_label,
            right_y_label=self._right_y_label,
            y_range=self._y_range,
            right_y_range=self._right_y_range,
            marker_x=self._marker_x,
            width=max(self._view.width(), 100),
            height=max(self._view.height(), MIN_HEIGHT_PX // 2),
            scale=self.devicePixelRatioF(),
        )
        self._pending = _EXECUTOR.submit(_RENDERER.render, scene)

    def _show(self, frame: Frame) -> None:
        image = QImage(
            frame.data, frame.width, frame.height, 4 * frame.width, QImage.Format.Format_RGBA8888
        )
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(self.devicePixelRatioF())
        self._view.setStyleSheet(f"background-color: {self._colours.background};")
        self._view.setPixmap(pixmap)
        self._frame = frame
        self.redraws += 1

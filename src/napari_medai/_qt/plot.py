"""A small live line plot for the docks, painted with QPainter in napari's theme colours.

Points may arrive many times a second while the GUI thread must stay
responsive (issue 11: p99 event-loop stall under 20 ms). QPainter paints a few
curves in a few milliseconds on the GUI thread, so the plot needs no renderer
process and no thread (issue 21; it was matplotlib in a helper process). A
curve with more than four points a pixel column is reduced to each column's
first, lowest, highest and last point before painting: the same pixels, at a
cost bound by the width. Changes are coalesced into at most ``max_fps``
repaints a second, and a hidden plot paints nothing.

Why not pyqtgraph: it is not a dependency, and a few curves, a legend row and
two y axes are all the docks need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFont, QFontMetricsF, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

if TYPE_CHECKING:
    import napari

#: The least height of the plot, so that several docks do not squash it flat.
MIN_HEIGHT_PX = 160
#: Height asked for when there is room.
PREFERRED_HEIGHT_PX = 200
STYLES = ("line", "points", "line+points")
AXES = ("left", "right")
#: Series colours, readable on both the dark and the light napari theme.
PALETTE = ("#f28e2b", "#4e9fe6", "#59a14f", "#e15759", "#b07aa1", "#9c755f")
#: Space between texts, ticks and edges, in logical pixels.
_PAD = 4.0
_TICK = 4.0
_LEGEND_SAMPLE = 16.0
_LEGEND_GAP = 12.0
_POINT_RADIUS = 2.5
_LINE_WIDTH = 1.5


class Colours(NamedTuple):
    """Theme colours the plot is drawn in (hex strings)."""

    background: str
    text: str
    lines: str
    marker: str


@dataclass
class Series:
    """One named curve: points, axis ("left" or "right"), style, legend label, colour."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    axis: str = "left"
    style: str = "line"
    label: str = ""
    colour: str = PALETTE[0]


class Curve(NamedTuple):
    """A series' points as arrays for one frame, and whether they go on the right axis."""

    series: Series
    xs: np.ndarray
    ys: np.ndarray
    on_right: bool


class Layout(NamedTuple):
    """Where things go in one frame: the axes box (widget coordinates), ranges and ticks."""

    curves: list[Curve]
    axes: QRectF
    x_range: tuple[float, float]
    x_ticks: list[float]
    y_range: tuple[float, float]
    y_ticks: list[float]
    right_range: tuple[float, float] | None
    right_ticks: list[float]
    legend_rows: list[list[Series]]


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


def nice_ticks(low: float, high: float, most: int) -> list[float]:
    """About ``most`` round values (1, 2 or 5 times a power of ten apart) in [low, high].

    At least two when the span allows, so that a short axis still reads as a scale.
    Written here because the only library tick locator installed is matplotlib's,
    and the point of this module is not to import matplotlib.
    """
    span = high - low
    if not (math.isfinite(span) and span > 0):
        return [low]
    raw = span / max(most, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    steps = [m * power for m in (0.1, 0.2, 0.5, 1, 2, 5, 10)]
    fitting = next(i for i, step in enumerate(steps) if step >= raw)
    for step in reversed(steps[: fitting + 1]):
        ticks = [
            i * step
            for i in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)
        ]
        if len(ticks) >= 2:
            break
    return ticks


def tick_text(value: float, ticks: list[float]) -> str:
    """``value`` with as many decimals as the tick spacing needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text


def data_range(
    arrays: list[np.ndarray], fixed: tuple[float, float] | None, margin: float
) -> tuple[float, float]:
    """``fixed`` if given, else the finite values' span widened by ``margin`` of it each side.

    A single value gets a span of a tenth of itself (or one) around it.
    """
    if fixed is not None:
        return float(fixed[0]), float(fixed[1])
    values = np.concatenate([np.zeros(0), *arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        return low - pad / 2, high + pad / 2
    pad = (high - low) * margin
    return low - pad, high + pad


def reduced(px: np.ndarray, py: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A polyline of at most four points a pixel column that covers the same pixels.

    Each column keeps its first, lowest, highest and last point; only when the
    x values never go back (as iterations and false positive rates do).
    """
    if px.size <= 4 * max(columns, 1) or np.any(np.diff(px) < 0):
        return px, py
    column = np.floor(px)
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    ends = np.r_[starts[1:], px.size] - 1
    low, high = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
    xs = np.stack([px[starts], px[starts], px[starts], px[ends]], axis=1).ravel()
    ys = np.stack([py[starts], low, high, py[ends]], axis=1).ravel()
    return xs, ys


def widest(metrics: QFontMetricsF, ticks: list[float]) -> float:
    """The width of the widest tick value."""
    return max(metrics.horizontalAdvance(tick_text(t, ticks)) for t in ticks)


def finite_runs(px: np.ndarray, py: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stretches of a curve between non-finite points (a NaN loss leaves a gap)."""
    finite = np.isfinite(px) & np.isfinite(py)
    edges = np.flatnonzero(np.diff(np.r_[False, finite, False].astype(np.int8)))
    return [(px[a:b], py[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class LivePlot(QWidget):
    """Named series against a common x, on a left and optionally a right y axis.

    Shows ``empty_text`` until a series has a point. Follows ``viewer``'s theme
    (the dark theme without a viewer). A click (or drag) inside the axes emits
    :attr:`clicked` with the x of the nearest point.
    """

    #: The x of the point nearest (along x) to a click or drag inside the axes.
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
        #: Frames with data painted so far.
        self.redraws = 0
        self.setMinimumSize(200, MIN_HEIGHT_PX)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1.0))
        self.setFont(font)
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(max(1, round(1000.0 / max_fps)))
        self._repaint.timeout.connect(self.update)
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)

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
        """Replace (or add) the series ``name``; ``label`` is its legend entry ("" for none)."""
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
        """Where the axes are, in widget coordinates; None while the empty text shows."""
        return None if self.is_empty else self.layout_now().axes

    # Layout -----------------------------------------------------------------------------

    def layout_now(self) -> Layout:
        """Where the axes, ticks and legend go at the widget's present size and data."""
        metrics = QFontMetricsF(self.font())
        line = metrics.height()
        width, height = float(self.width()), float(self.height())
        right_axis = self._right_y_label is not None
        # The legend keeps clear of the strips at both sides where the y labels go.
        rows = self._legend_rows(metrics, width - 2 * (2 * _PAD + line))
        top = _PAD + len(rows) * line + (_PAD if rows else line / 2)
        bottom = height - (2 * _PAD + _TICK + 2 * line)
        most = max(2, int((bottom - top) / (2 * line)))
        curves = [
            Curve(s, np.asarray(s.xs), np.asarray(s.ys), right_axis and s.axis == "right")
            for s in self._series.values()
        ]
        left_ys = [c.ys for c in curves if not c.on_right]
        y_range = data_range(left_ys, self._y_range, 0.05)
        y_ticks = nice_ticks(*y_range, most)
        right_range, right_ticks = None, []
        if right_axis:
            right_ys = [c.ys for c in curves if c.on_right]
            right_range = data_range(right_ys, self._right_y_range, 0.05)
            right_ticks = nice_ticks(*right_range, most)
        # No margin along x: the curves run from edge to edge.
        x_range = data_range([c.xs for c in curves], None, 0.0)
        x_ticks = nice_ticks(*x_range, 6)
        left = _PAD + line + _PAD + widest(metrics, y_ticks) + _PAD / 2 + _TICK
        if right_axis:
            right = width - (_TICK + _PAD / 2 + widest(metrics, right_ticks) + _PAD + line + _PAD)
        else:  # room for half the last x tick value, centred under the axes' right edge
            right = width - _PAD - max(widest(metrics, x_ticks) / 2, _PAD)
        # On half pixels, so that the 1 px frame and ticks are crisp.
        left, top = math.floor(left) + 0.5, math.floor(top) + 0.5
        axes = QRectF(left, top, max(round(right - left), 1), max(round(bottom - top), 1))
        return Layout(
            curves, axes, x_range, x_ticks, y_range, y_ticks, right_range, right_ticks, rows
        )

    def _legend_rows(self, metrics: QFontMetricsF, width: float) -> list[list[Series]]:
        """The labelled series, in rows as wide as ``width`` (a narrow dock gets more rows)."""
        rows: list[list[Series]] = []
        used = width
        for series in self._series.values():
            if not series.label:
                continue
            entry = self._legend_entry_width(metrics, series)
            if rows and used + _LEGEND_GAP + entry <= width:
                rows[-1].append(series)
                used += _LEGEND_GAP + entry
            else:
                rows.append([series])
                used = entry
        return rows

    @staticmethod
    def _legend_entry_width(metrics: QFontMetricsF, series: Series) -> float:
        return _LEGEND_SAMPLE + _PAD + metrics.horizontalAdvance(series.label)

    # Events -----------------------------------------------------------------------------

    def _changed(self) -> None:
        """Repaint soon: at most ``max_fps`` times a second, however often points come."""
        if not self._repaint.isActive():
            self._repaint.start()

    def _on_theme(self, _event: Any = None) -> None:
        if self._viewer is not None:
            self._colours = theme_colours(self._viewer.theme)
        self._changed()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            self._emit_click(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._emit_click(event)

    def _emit_click(self, event) -> None:
        position = event.position() if hasattr(event, "position") else event.localPos()
        x = self.x_at(position.x(), position.y())
        if x is not None:
            self.clicked.emit(x)

    def x_at(self, px: float, py: float) -> float | None:
        """The x of the point nearest along x to widget position (px, py); None outside the axes."""
        if self.is_empty:
            return None
        layout = self.layout_now()
        if not layout.axes.contains(QPointF(px, py)):
            return None
        x0, x1 = layout.x_range
        x = x0 + (px - layout.axes.left()) / layout.axes.width() * (x1 - x0)
        xs = np.concatenate([c.xs for c in layout.curves])
        xs = xs[np.isfinite(xs)]
        return float(xs[np.argmin(np.abs(xs - x))]) if xs.size else None

    # Painting ---------------------------------------------------------------------------

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(self._colours.background))
        if self.is_empty:
            self._paint_empty(painter)
        else:
            layout = self.layout_now()
            self._paint_axes(painter, layout)
            self._paint_curves(painter, layout)
            self._paint_legend(painter, layout)
            self.redraws += 1
        painter.end()

    def _paint_empty(self, painter: QPainter) -> None:
        painter.setPen(QColor(self._colours.text))
        box = QRectF(self.rect()).adjusted(2 * _PAD, 2 * _PAD, -2 * _PAD, -2 * _PAD)
        flags = Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap
        painter.drawText(box, int(flags), self._empty_text)

    def _paint_axes(self, painter: QPainter, layout: Layout) -> None:
        """The frame, ticks with their values and the axis labels."""
        line = QFontMetricsF(self.font()).height()
        axes = layout.axes
        painter.setPen(QPen(QColor(self._colours.lines), 1.0))
        painter.drawRect(axes)
        x0, x1 = layout.x_range
        for value in layout.x_ticks:
            x = axes.left() + (value - x0) / (x1 - x0) * axes.width()
            painter.setPen(QPen(QColor(self._colours.lines), 1.0))
            painter.drawLine(QPointF(x, axes.bottom()), QPointF(x, axes.bottom() + _TICK))
            painter.setPen(QColor(self._colours.text))
            box = QRectF(x - axes.width() / 2, axes.bottom() + _TICK, axes.width(), line)
            painter.drawText(
                box, int(Qt.AlignmentFlag.AlignHCenter), tick_text(value, layout.x_ticks)
            )
        self._paint_y_ticks(painter, axes, layout.y_range, layout.y_ticks, left=True)
        if layout.right_range is not None:
            self._paint_y_ticks(painter, axes, layout.right_range, layout.right_ticks, left=False)
        painter.setPen(QColor(self._colours.text))
        below = QRectF(axes.left(), axes.bottom() + _TICK + line, axes.width(), line)
        x_label = self._elided(self._x_label, axes.width())
        painter.drawText(below, int(Qt.AlignmentFlag.AlignHCenter), x_label)
        self._paint_vertical_label(painter, self._y_label, axes, _PAD + line / 2, -90.0)
        if self._right_y_label is not None:
            at = self.width() - _PAD - line / 2
            self._paint_vertical_label(painter, self._right_y_label, axes, at, 90.0)

    def _paint_y_ticks(
        self,
        painter: QPainter,
        axes: QRectF,
        value_range: tuple[float, float],
        ticks: list[float],
        *,
        left: bool,
    ) -> None:
        metrics = QFontMetricsF(self.font())
        y0, y1 = value_range
        edge = axes.left() if left else axes.right()
        outward = -_TICK if left else _TICK
        for value in ticks:
            y = axes.bottom() - (value - y0) / (y1 - y0) * axes.height()
            painter.setPen(QPen(QColor(self._colours.lines), 1.0))
            painter.drawLine(QPointF(edge, y), QPointF(edge + outward, y))
            painter.setPen(QColor(self._colours.text))
            label = tick_text(value, ticks)
            advance = metrics.horizontalAdvance(label)
            x = edge - _TICK - _PAD / 2 - advance if left else edge + _TICK + _PAD / 2
            painter.drawText(QPointF(x, y + (metrics.ascent() - metrics.descent()) / 2), label)

    def _paint_vertical_label(
        self, painter: QPainter, label: str, axes: QRectF, x: float, angle: float
    ) -> None:
        """``label`` turned by ``angle`` degrees and centred on ``x``, beside the axes.

        Centred on the axes when it fits their height; else on the whole height,
        and shortened with an ellipsis only if even that is too short.
        """
        metrics = QFontMetricsF(self.font())
        fits = metrics.horizontalAdvance(label) <= axes.height()
        length = axes.height() if fits else self.height() - 2 * _PAD
        painter.save()
        painter.translate(x, axes.center().y() if fits else self.height() / 2)
        painter.rotate(angle)
        box = QRectF(-length / 2, -metrics.height() / 2, length, metrics.height())
        painter.drawText(box, int(Qt.AlignmentFlag.AlignCenter), self._elided(label, length))
        painter.restore()

    def _elided(self, label: str, width: float) -> str:
        """``label``, shortened with an ellipsis only if it is wider than ``width``."""
        return QFontMetricsF(self.font()).elidedText(label, Qt.TextElideMode.ElideRight, width)

    def _paint_curves(self, painter: QPainter, layout: Layout) -> None:
        """Every series and the marker, clipped to the axes."""
        axes = layout.axes
        painter.save()
        painter.setClipRect(axes)
        x0, x1 = layout.x_range
        for curve in layout.curves:
            y0, y1 = layout.right_range if curve.on_right else layout.y_range
            px = axes.left() + (curve.xs - x0) / (x1 - x0) * axes.width()
            py = axes.bottom() - (curve.ys - y0) / (y1 - y0) * axes.height()
            self._paint_series(painter, curve.series, px, py, int(axes.width()))
        if self._marker_x is not None:
            x = axes.left() + (self._marker_x - x0) / (x1 - x0) * axes.width()
            painter.setPen(QPen(QColor(self._colours.marker), _LINE_WIDTH))
            painter.drawLine(QPointF(x, axes.top()), QPointF(x, axes.bottom()))
        painter.restore()

    @staticmethod
    def _paint_series(
        painter: QPainter, series: Series, px: np.ndarray, py: np.ndarray, columns: int
    ) -> None:
        colour = QColor(series.colour)
        for xs, ys in finite_runs(px, py):
            if "line" in series.style:
                painter.setPen(QPen(colour, _LINE_WIDTH))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                line_xs, line_ys = reduced(xs, ys, columns)
                points = zip(line_xs.tolist(), line_ys.tolist(), strict=True)
                painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in points]))
            if "points" in series.style:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(colour)
                # One dot a whole pixel: more would cover the same pixels again.
                dots = np.unique(np.round(np.stack([xs, ys], axis=1)), axis=0)
                for x, y in dots.tolist():
                    painter.drawEllipse(QPointF(x, y), _POINT_RADIUS, _POINT_RADIUS)

    def _paint_legend(self, painter: QPainter, layout: Layout) -> None:
        """One row (or more on a narrow dock) above the axes: it never hides the curves."""
        metrics = QFontMetricsF(self.font())
        line = metrics.height()
        for row_index, row in enumerate(layout.legend_rows):
            entries = [self._legend_entry_width(metrics, s) for s in row]
            x = (self.width() - sum(entries) - _LEGEND_GAP * (len(row) - 1)) / 2
            y = _PAD + row_index * line
            for series, entry in zip(row, entries, strict=True):
                # On a pixel centre, so that the sample line is crisp.
                middle = QPointF(x + _LEGEND_SAMPLE / 2, math.floor(y + line / 2) + 0.5)
                colour = QColor(series.colour)
                if "line" in series.style:
                    painter.setPen(QPen(colour, _LINE_WIDTH))
                    painter.drawLine(
                        QPointF(x, middle.y()), QPointF(x + _LEGEND_SAMPLE, middle.y())
                    )
                if "points" in series.style:
                    painter.setPen(Qt.PenStyle.NoPen)
                    painter.setBrush(colour)
                    painter.drawEllipse(middle, _POINT_RADIUS, _POINT_RADIUS)
                painter.setPen(QColor(self._colours.text))
                label_x = x + _LEGEND_SAMPLE + _PAD
                painter.drawText(QPointF(label_x, y + metrics.ascent()), series.label)
                x += entry + _LEGEND_GAP

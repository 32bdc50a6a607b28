"""The live plot, painted in-process: empty state, theme, axes and legend, marker, click, cost."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from napari.components import ViewerModel
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QColor, QFontMetricsF, QImage, QMouseEvent, QPainter, QPen, QPolygonF

from napari_medai._qt.plot import (
    MIN_HEIGHT_PX,
    LivePlot,
    finite_runs,
    nice_ticks,
    reduced,
    theme_colours,
    tick_text,
)

EMPTY = "No data yet"


def make_plot(qtbot, viewer=None, **options) -> LivePlot:
    options = {"x_label": "slice", "y_label": "probability", "max_fps": 50, **options}
    plot = LivePlot(viewer, empty_text=EMPTY, **options)
    qtbot.addWidget(plot)
    plot.resize(400, 220)
    plot.show()
    qtbot.waitExposed(plot)
    return plot


def rgb(image: QImage) -> np.ndarray:
    """``image`` as an (height, width, 3) array."""
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    bits = image.constBits()
    if hasattr(bits, "setsize"):  # PyQt's sip.voidptr
        bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 3 * image.width()].reshape(image.height(), image.width(), 3).copy()


def grab(plot: LivePlot) -> np.ndarray:
    """The plot as painted now, one array element per pixel, in 8 bits a channel.

    Painted into an image, not grabbed from the screen, whose depth may be 16 bits.
    """
    image = QImage(plot.size(), QImage.Format.Format_RGB32)
    plot.render(image)
    return rgb(image)


def near(pixels: np.ndarray, hex_colour: str, tolerance: int) -> np.ndarray:
    """Where ``pixels`` are within ``tolerance`` of ``hex_colour`` in every channel."""
    colour = np.array(QColor(hex_colour).getRgb()[:3])
    return (np.abs(pixels.astype(int) - colour) <= tolerance).all(axis=-1)


def to_pixel(plot: LivePlot, x: float, y: float, *, right: bool = False) -> tuple[int, int]:
    """The widget pixel (column, row) of data point (x, y)."""
    layout = plot.layout_now()
    axes = layout.axes
    (x0, x1), (y0, y1) = layout.x_range, layout.right_range if right else layout.y_range
    column = axes.left() + (x - x0) / (x1 - x0) * axes.width()
    row = axes.bottom() - (y - y0) / (y1 - y0) * axes.height()
    return round(column), round(row)


def colour_around(pixels: np.ndarray, at: tuple[int, int], hex_colour: str) -> bool:
    """Whether ``hex_colour`` is painted within two pixels of ``at`` (antialiasing blends edges)."""
    column, row = at
    patch = pixels[max(row - 2, 0) : row + 3, max(column - 2, 0) : column + 3]
    return bool(near(patch, hex_colour, 40).any())


def test_empty_state_shows_the_text_and_draws_no_axes(qtbot):
    plot = make_plot(qtbot)
    colours = plot.colours
    empty = grab(plot)
    assert plot.is_empty and plot.empty_text == EMPTY
    assert plot.redraws == 0 and plot.axes_rect() is None
    assert plot.height() >= MIN_HEIGHT_PX
    text_rows = np.flatnonzero(near(empty, colours.text, 30).any(axis=1))
    assert text_rows.size > 0, "the empty text is painted"
    # One centred line of text and nothing else: no frame, ticks or labels.
    line = QFontMetricsF(plot.font()).height()
    assert abs(text_rows.mean() - plot.height() / 2) < line
    assert text_rows.max() - text_rows.min() <= line
    outside = np.ones(empty.shape[:2], bool)
    outside[text_rows.min() : text_rows.max() + 1] = False
    assert near(empty[outside], colours.background, 2).all()

    plot.append("loss", 1, 0.5)
    assert not plot.is_empty and plot.axes_rect() is not None
    assert not np.array_equal(grab(plot), empty) and plot.redraws >= 1
    plot.clear()
    assert plot.is_empty and plot.axes_rect() is None and plot.series("loss") == []
    np.testing.assert_array_equal(grab(plot), empty)


def test_series_hold_their_points_and_options(qtbot):
    plot = make_plot(qtbot, right_y_label="Dice", right_y_range=(0.0, 1.0))
    plot.set_series("loss", [0, 1, 2], [3.0, 2.0, 1.0], label="loss")
    plot.set_series("dice", [], [], axis="right", style="line+points", label="Dice")
    plot.append("dice", 2, 0.25)
    assert plot.series("loss") == [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0)]
    assert plot.series("dice") == [(2.0, 0.25)]
    assert plot.series("missing") == []
    with pytest.raises(ValueError, match="axis"):
        plot.set_series("bad", [1], [1], axis="top")
    with pytest.raises(ValueError, match="style"):
        plot.set_series("bad", [1], [1], style="bars")
    with pytest.raises(ValueError, match="2 x values but 1 y"):
        plot.set_series("bad", [1, 2], [1])
    plot.clear()  # points go, options stay
    plot.append("dice", 5, 0.5)
    assert plot.series("dice") == [(5.0, 0.5)]
    assert plot.layout_now().right_range == (0.0, 1.0)
    assert plot.layout_now().curves[1].on_right


def test_plot_follows_the_viewer_theme(qtbot):
    viewer = ViewerModel()
    viewer.theme = "dark"
    plot = make_plot(qtbot, viewer)
    idle = make_plot(qtbot, viewer)  # stays empty
    dark, light = theme_colours("dark"), theme_colours("light")
    assert plot.colours == dark and dark != light
    plot.set_series("p", range(10), [i / 10 for i in range(10)])
    for colours in (dark, light):
        viewer.theme = "light" if colours is light else "dark"
        assert plot.colours == colours and idle.colours == colours
        pixels = grab(plot)
        assert near(pixels[:2, :2], colours.background, 2).all()
        rect = plot.axes_rect()
        inside = pixels[round(rect.top()) + 2, round(rect.left()) + 2]
        assert near(inside, colours.background, 2), "no white plot on a dark theme"
        assert near(pixels, colours.text, 30).any() and near(pixels, colours.lines, 2).any()
        assert near(grab(idle), colours.background, 2).mean() > 0.9


def test_curves_axes_legend_and_labels_are_drawn_in_their_places(qtbot):
    plot = make_plot(
        qtbot, x_label="iteration", y_label="loss", right_y_label="Dice", right_y_range=(0, 1)
    )
    xs = np.arange(1, 201)
    plot.set_series("loss", xs, np.exp(-xs / 50), label="loss")
    dice_xs = [20, 60, 100, 140, 180]
    plot.set_series("dice", dice_xs, [0.1, 0.4, 0.6, 0.7, 0.75], axis="right", style="line+points")
    loss, dice = plot._series["loss"].colour, plot._series["dice"].colour
    colours = plot.colours
    pixels = grab(plot)
    axes = plot.axes_rect()
    assert axes.width() > 100 and axes.height() > 50
    for x in xs[::10]:
        assert colour_around(pixels, to_pixel(plot, x, math.exp(-x / 50)), loss), x
    for x, y in plot.series("dice"):
        column, row = to_pixel(plot, x, y, right=True)
        assert near(pixels[row, column], dice, 40), (x, y)

    # The frame is a 1 px line on half pixels: the whole pixel column holding the edge.
    left, right = math.floor(axes.left()), math.floor(axes.right())
    top, bottom = math.floor(axes.top()), math.floor(axes.bottom())
    frame = near(pixels[top:bottom, left], colours.lines, 12)
    assert frame.mean() > 0.8, "the left edge of the axes is drawn"
    legend = pixels[:top]
    for colour in (loss, dice, colours.text):
        assert near(legend, colour, 30).any(), f"the legend row shows {colour}"
    assert not near(pixels[bottom + 2 :], loss, 30).any(), "nothing of the curve below the axes"

    line = QFontMetricsF(plot.font()).height()
    text = near(pixels, colours.text, 60)
    y_label = text[:, : round(line) + 4]
    x_label = text[round(bottom + line + 4) :, left:right]
    right_label = text[:, plot.width() - round(line) - 4 :]
    for name, band in (("y", y_label), ("x", x_label), ("right y", right_label)):
        assert band.any(), f"the {name} axis label is drawn"
    # Unclipped: nothing reaches the widget's edge.
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert near(edges, colours.background, 2).all()


def test_a_long_axis_label_is_written_in_full_at_the_least_height(qtbot):
    label = "held-out macro ROC AUC"
    plot = make_plot(qtbot, right_y_label=label, right_y_range=(0, 1))
    plot.resize(400, MIN_HEIGHT_PX)
    plot.set_series("loss", [1, 2, 3], [0.5, 0.4, 0.3], label="loss")
    pixels = grab(plot)
    metrics = QFontMetricsF(plot.font())
    assert metrics.horizontalAdvance(label) > plot.axes_rect().height()  # longer than the axes
    strip = near(pixels[:, plot.width() - round(metrics.height()) - 4 :], plot.colours.text, 60)
    rows = np.flatnonzero(strip.any(axis=1))
    # Not cut short: the text spans its whole length (less the letters' side bearings).
    assert rows.max() - rows.min() >= metrics.horizontalAdvance(label) - 6
    assert near(np.concatenate([pixels[0], pixels[-1]]), plot.colours.background, 2).all()


def test_the_marker_is_drawn_at_its_x(qtbot):
    plot = make_plot(qtbot)
    plot.set_series("p", range(11), [0.5] * 11)
    assert plot.marker_x is None
    plot.set_marker_x(5)
    assert plot.marker_x == 5.0
    y0, y1 = plot.layout_now().y_range
    column, row = to_pixel(plot, 5.0, y0 + 0.9 * (y1 - y0))
    assert colour_around(grab(plot), (column, row), plot.colours.marker)
    plot.set_marker_x(None)
    assert not colour_around(grab(plot), (column, row), plot.colours.marker)


def test_click_and_drag_emit_the_x_of_the_nearest_point(qtbot):
    plot = make_plot(qtbot)
    with qtbot.assertNotEmitted(plot.clicked):  # nothing to click on yet
        qtbot.mouseClick(plot, Qt.MouseButton.LeftButton, pos=plot.rect().center())
    plot.set_series("p", [0, 2, 5, 10], [0.1, 0.9, 0.4, 0.6])
    for at, nearest in ((3.0, 2.0), (4.0, 5.0), (9.0, 10.0)):
        column, row = to_pixel(plot, at, 0.5)
        with qtbot.waitSignal(plot.clicked, timeout=1000) as blocker:
            qtbot.mouseClick(plot, Qt.MouseButton.LeftButton, pos=QPoint(column, row))
        assert blocker.args == [nearest]

    column, row = to_pixel(plot, 0.4, 0.5)
    local = QPointF(column, row)
    drag = QMouseEvent(
        QEvent.Type.MouseMove,
        local,
        QPointF(plot.mapToGlobal(local.toPoint())),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(plot.clicked, timeout=1000) as blocker:
        plot.mouseMoveEvent(drag)
    assert blocker.args == [0.0]

    outside = QPoint(round(plot.axes_rect().left()) - 20, row)
    with qtbot.assertNotEmitted(plot.clicked):
        qtbot.mouseClick(plot, Qt.MouseButton.LeftButton, pos=outside)
        qtbot.mouseClick(plot, Qt.MouseButton.RightButton, pos=QPoint(column, row))


def test_many_points_a_second_repaint_at_most_max_fps(qtbot):
    plot = make_plot(qtbot, max_fps=1)
    plot.append("loss", 0, 1.0)
    qtbot.waitUntil(lambda: plot.redraws == 1, timeout=5000)
    for i in range(1, 51):
        plot.append("loss", i, 1 / i)
    # One repaint a second: none yet 100 ms later, then one for all 50 points.
    qtbot.wait(100)
    assert plot.redraws == 1
    qtbot.waitUntil(lambda: plot.redraws == 2, timeout=5000)
    qtbot.wait(100)
    assert plot.redraws == 2


def paint_polyline(xs: np.ndarray, ys: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pixels a 1.5 px polyline through the points covers, without antialiasing."""
    image = QImage(*size, QImage.Format.Format_RGB888)
    image.fill(QColor("black"))
    painter = QPainter(image)
    painter.setPen(QPen(QColor("white"), 1.5))
    painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in zip(xs, ys, strict=True)]))
    painter.end()
    return rgb(image)[..., 0] > 0


def dilated(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in the eight directions."""
    padded = np.pad(mask, 1)
    rows, columns = mask.shape
    shifts = [padded[r : r + rows, c : c + columns] for r in range(3) for c in range(3)]
    return np.logical_or.reduce(shifts)


def test_a_long_curve_is_reduced_to_the_same_pixels():
    rng = np.random.default_rng(0)
    width, height = 300, 150
    px = np.linspace(0.5, width - 0.5, 60_000)
    py = height / 2 + 40 * np.sin(px / 20) + rng.normal(0, 8, px.size)
    xs, ys = reduced(px, py, width)
    assert xs.size <= 4 * width
    full = paint_polyline(px, py, (width, height))
    fewer = paint_polyline(xs, ys, (width, height))
    # The same pixels, give or take one where a column's points are a fraction apart.
    assert (full <= dilated(fewer)).all() and (fewer <= dilated(full)).all()
    assert fewer.sum() > 0.9 * full.sum()
    # x going back (a closed curve) is drawn as it is.
    back = np.r_[px, px[::-1]]
    assert reduced(back, np.r_[py, py], width)[0].size == back.size


def test_painting_100000_points_is_quick(qtbot):
    plot = make_plot(qtbot, right_y_label="Dice", right_y_range=(0, 1))
    xs = np.arange(100_000)
    plot.set_series("loss", xs, np.exp(-xs / 20_000) + 0.05 * np.sin(xs), label="loss")
    plot.set_series("dice", xs[::100], np.linspace(0, 1, 1000), axis="right", style="line+points")
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        plot.grab()
        timings.append(time.perf_counter() - started)
    # Measured: ~60 ms on a 2-core machine at load 8 (1.1 s when every point was
    # stroked). Painting is bounded by the width (test above), plus numpy work over
    # 100,000 values: 1 s leaves a tenfold margin for a slow, busy machine.
    assert min(timings) < 1.0, timings


def test_non_finite_points_leave_a_gap_and_do_not_set_the_range(qtbot):
    runs = finite_runs(np.arange(6.0), np.array([1, np.nan, 2, 3, np.inf, 4]))
    assert [list(xs) for xs, _ in runs] == [[0.0], [2.0, 3.0], [5.0]]
    plot = make_plot(qtbot)
    plot.set_series("loss", [0, 1, 2, 3], [1.0, math.nan, 2.0, math.inf])
    y0, y1 = plot.layout_now().y_range
    assert y0 < 1.0 < 2.0 < y1 < 3.0
    grab(plot)


def test_ticks_are_round_values_written_as_precisely_as_their_spacing():
    assert nice_ticks(0.0, 1.0, 5) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(3.0, 397.0, 6) == pytest.approx([100.0, 200.0, 300.0])
    # A short axis still gets two values to read a scale from, not one.
    assert nice_ticks(0.05, 1.13, 2) == pytest.approx([0.5, 1.0])
    ticks = nice_ticks(-0.05, 1.05, 10)
    assert [tick_text(t, ticks) for t in ticks] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert tick_text(-1e-17, [-1e-17, 0.5]) == "0.0"

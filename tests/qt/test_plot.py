"""The live plot: empty state, series, theme colours, marker and click-to-x."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtGui import QColor

from napari_medai._qt.plot import MIN_HEIGHT_PX, LivePlot, theme_colours

EMPTY = "No data yet"


def make_plot(qtbot, viewer=None, **options) -> LivePlot:
    plot = LivePlot(
        viewer, x_label="slice", y_label="probability", empty_text=EMPTY, max_fps=50, **options
    )
    qtbot.addWidget(plot)
    plot.resize(400, 220)
    plot.show()
    qtbot.waitExposed(plot)
    return plot


def shown_pixel(plot: LivePlot, x: float, y: float) -> QColor:
    """The colour of the shown frame at widget coordinates (x, y)."""
    image = plot._view.pixmap().toImage()
    ratio = plot.devicePixelRatioF()
    return image.pixelColor(round(x * ratio), round(y * ratio))


def close(colour: QColor, hex_colour: str, tolerance: int = 12) -> bool:
    other = QColor(hex_colour)
    return all(
        abs(a - b) <= tolerance
        for a, b in zip(colour.getRgb()[:3], other.getRgb()[:3], strict=True)
    )


def wait_frame(qtbot, plot: LivePlot, after: int = 0) -> None:
    # The first frame waits for the renderer process to start (seconds on a busy machine).
    qtbot.waitUntil(lambda: plot.redraws > after, timeout=30_000)


def test_empty_state_shows_the_text_and_draws_no_axes(qtbot):
    plot = make_plot(qtbot)
    qtbot.wait(100)
    assert plot.is_empty and plot._view.text() == EMPTY
    assert plot.redraws == 0 and plot.axes_rect() is None
    assert plot.height() >= MIN_HEIGHT_PX

    plot.append("loss", 1, 0.5)
    wait_frame(qtbot, plot)
    assert not plot.is_empty and plot._view.pixmap() is not None
    plot.clear()
    assert plot.is_empty and plot._view.text() == EMPTY
    assert plot.series("loss") == []


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
    with pytest.raises(ValueError, match="2 x values but 1 y"):
        plot.set_series("bad", [1, 2], [1])
    plot.clear()  # points go, options stay
    plot.append("dice", 5, 0.5)
    wait_frame(qtbot, plot)
    assert plot.series("dice") == [(5.0, 0.5)] and plot._series["dice"].axis == "right"


def test_plot_follows_the_viewer_theme(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.theme = "dark"
    plot = make_plot(qtbot, viewer)
    dark, light = theme_colours("dark"), theme_colours("light")
    assert plot.colours == dark
    assert dark.background in plot._view.styleSheet()  # the empty state too

    plot.set_series("p", range(10), [i / 10 for i in range(10)])
    wait_frame(qtbot, plot)
    assert close(shown_pixel(plot, 2, 2), dark.background)

    frames = plot.redraws
    viewer.theme = "light"
    assert plot.colours == light
    wait_frame(qtbot, plot, after=frames)
    assert close(shown_pixel(plot, 2, 2), light.background)


def test_click_emits_the_data_x_and_the_marker_is_drawn_there(qtbot):
    plot = make_plot(qtbot)
    plot.set_series("p", range(11), [0.5] * 11)
    plot.set_marker_x(5)
    wait_frame(qtbot, plot)
    rect = plot.axes_rect()
    assert rect is not None and rect.width() > 100 and rect.height() > 50
    # x runs from 0 to 10 across the axes, without margins.
    middle = rect.center()
    assert close(
        shown_pixel(plot, middle.x(), rect.top() + 0.25 * rect.height()), plot.colours.marker, 40
    )

    view = plot._view
    at = view.mapFrom(plot, QPoint(round(rect.left() + 0.3 * rect.width()), round(middle.y())))
    with qtbot.waitSignal(plot.clicked, timeout=1000) as blocker:
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=at)
    assert blocker.args[0] == pytest.approx(3.0, abs=10 / rect.width() * 2)

    outside = view.mapFrom(plot, QPoint(round(rect.left()) - 20, round(middle.y())))
    with qtbot.assertNotEmitted(plot.clicked):
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=outside)

"""Export, Label statistics, Evaluate, Window presets and Cohort fit a laptop screen.

Each scrolls inside itself with a compact minimum height, and neither a long
status line nor a long result table grows it.
"""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_medai._qt.stats_widget import TABLE_HEIGHT_PX

#: Minimum heights before these docks scrolled: Export 408 px, Label statistics 437,
#: Evaluate 481, Cohort 361, Window presets 180. On a 1366x768 screen napari's window has
#: about 650 px below its menus for docks; a third of that leaves room for two more docks
#: stacked beside the canvas. Everything scrolls, so only the scroll area's own minimum and
#: the dock's title bar count (about 90 px under any style).
MAX_MIN_HEIGHT_PX = 220
DOCKS = ("Export", "Label statistics", "Evaluate", "Window presets", "Cohort")
#: A message as long as a real one (a path with no space to break at, then words).
LONG = "/data/study/" + "a_scan_folder_without_spaces_" * 12 + " and then words" * 30


def status_line(widget):
    """The label each dock says things in (the Window presets' note, Cohort's summary)."""
    if hasattr(widget, "note"):
        return widget.note
    return (widget.summary if hasattr(widget, "summary") else widget.status).native


@pytest.fixture
def docked(make_napari_viewer, tmp_path, monkeypatch, request):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    viewer = make_napari_viewer(show=True)  # a hidden dock's size hints do not follow its text
    viewer.window._qt_window.resize(1366, 768)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", request.param)
    QApplication.processEvents()
    return dock, widget


@pytest.mark.parametrize("docked", DOCKS, indirect=True)
def test_the_dock_scrolls_inside_itself_with_a_compact_minimum_height(docked):
    dock, widget = docked
    scroll = dock.widget().findChild(QScrollArea)
    assert scroll is not None, "no scroll area inside the dock"
    assert scroll.widget().isAncestorOf(status_line(widget))  # the whole column scrolls
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    # It never scrolls sideways: wide enough for its fields and a scroll bar, none cut off.
    bar = scroll.verticalScrollBar().sizeHint().width()
    assert scroll.width() >= scroll.widget().minimumSizeHint().width() + bar


@pytest.mark.parametrize("docked", DOCKS, indirect=True)
def test_a_long_message_wraps_and_never_grows_the_dock(docked):
    dock, widget = docked
    before = dock.minimumSizeHint()
    status_line(widget).setText(LONG)
    QApplication.processEvents()
    after = dock.minimumSizeHint()
    assert after.height() == before.height()
    assert after.width() <= before.width()  # wraps (a long path too) instead of widening


@pytest.mark.parametrize("docked", ["Label statistics", "Evaluate"], indirect=True)
def test_a_long_table_scrolls_inside_its_bounded_height(docked):
    dock, widget = docked
    before = dock.minimumSizeHint().height()
    columns = list(widget.table.column_headers)
    rows = [[str(row)] * len(columns) for row in range(40)]
    widget.table.value = {"data": rows, "index": list(range(40)), "columns": columns}
    QApplication.processEvents()
    table = widget.table.native
    assert table.height() <= TABLE_HEIGHT_PX
    assert table.verticalHeader().length() > table.height()  # the rows scroll inside it
    assert dock.minimumSizeHint().height() == before

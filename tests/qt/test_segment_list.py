"""The Segment list dock: rows, colour, visibility, lock, status, rename, add/delete, fit."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from qtpy.QtCore import QPoint
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QApplication, QCheckBox, QComboBox, QScrollArea

from napari_medai._napari import segments as seg
from napari_medai._napari.layers import labels_layer_data
from napari_medai._qt.segment_list import NAME_COLUMN, TABLE_HEIGHT_PX
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.labels import read_segmentation
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.volume import LabelMap

SPACING = (2.0, 1.0, 0.5)  # mm: one voxel is 1 mm3
#: See tests/qt/test_small_docks_fit.py: a third of the ~650 px napari has below its menus.
MAX_MIN_HEIGHT_PX = 220


def _organs(count: int = 2) -> LabelMap:
    array = np.zeros((6, 40, 40), np.uint8)
    for value in range(1, count + 1):
        array[1:4, value : value + 1, 2:12] = value  # 30 voxels each
    return LabelMap(array, Geometry(spacing=np.array(SPACING)), {}, {1: "liver"})


def _wait(qtbot, condition, timeout: float = 5.0) -> None:
    qtbot.waitUntil(condition, timeout=int(timeout * 1000))


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    data, kwargs, _ = labels_layer_data(_organs())
    layer = viewer.add_labels(data, **kwargs)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    QApplication.processEvents()
    return viewer, layer, dock, widget


def _cell(widget, value: int, column: int):
    return widget.table.cellWidget(widget.row_of_value(value), column)


def test_rows_list_names_and_volumes_in_ml(docked):
    _, _, _, widget = docked
    table = widget.table
    assert table.rowCount() == 2
    assert table.item(0, NAME_COLUMN).text() == "liver"
    assert table.item(1, NAME_COLUMN).text() == "label 2"
    # 30 voxels of 2 x 1 x 0.5 mm = 30 mm3 = 0.03 mL: a small segment never reads 0.
    assert table.item(0, 5).text() == "0.03"
    assert table.item(0, 5).toolTip() == "30 voxels, 30 mm3"


def test_volumes_follow_painting(docked, qtbot):
    _, layer, _, widget = docked
    layer.brush_size = 30
    with layer.block_history():
        layer.paint((2, 30, 30), 2)
    mm3 = np.count_nonzero(layer.data == 2) * np.prod(SPACING)
    _wait(qtbot, lambda: widget.table.item(1, 5).text() == seg.format_ml(mm3 / 1000))


def test_a_recount_updates_volumes_in_place(make_napari_viewer, qtbot):
    # Each stroke recounts: the rows, the selection, the scroll and a name being edited stay.
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = labels_layer_data(_organs(12))  # more rows than the table shows
    layer = viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    table = widget.table
    table.setCurrentCell(widget.row_of_value(11), NAME_COLUMN)
    table.scrollToBottom()
    scrolled = table.verticalScrollBar().value()
    assert scrolled > 0
    swatches = [table.cellWidget(row, 0) for row in range(table.rowCount())]
    table.editItem(table.item(widget.row_of_value(12), NAME_COLUMN))
    assert table.state() == table.State.EditingState
    volume = table.item(widget.row_of_value(12), 5)
    before = volume.text()
    layer.brush_size = 20  # 30 -> over 300 voxels: a new volume at any precision
    with layer.block_history():
        layer.paint((2, 30, 30), 12)
    _wait(qtbot, lambda: table.item(widget.row_of_value(12), 5).text() != before)
    assert [table.cellWidget(row, 0) for row in range(table.rowCount())] == swatches
    assert table.currentRow() == widget.row_of_value(11)
    assert table.verticalScrollBar().value() == scrolled
    assert table.state() == table.State.EditingState


def test_clicking_a_row_selects_its_label_for_painting(docked):
    _, layer, _, widget = docked
    widget.table.setCurrentCell(widget.row_of_value(2), NAME_COLUMN)
    assert layer.selected_label == 2
    assert "Painting 'label 2'" in widget.status.value


def test_colour_visibility_and_status_change_the_layer(docked):
    _, layer, _, widget = docked
    widget.set_color(2, QColor(255, 0, 0))
    np.testing.assert_allclose(layer.get_color(2), (1, 0, 0, 1))
    _cell(widget, 2, 1).setChecked(False)
    assert layer.get_color(2)[3] == 0
    status: QComboBox = _cell(widget, 2, 4)
    status.setCurrentText("done")
    assert seg.segments(layer)[1].status == "done"


def test_a_locked_row_is_not_painted_over(docked):
    _, layer, _, widget = docked
    lock: QCheckBox = _cell(widget, 1, 2)
    lock.setChecked(True)
    assert seg.locked_labels(layer) == {1}
    before = layer.data == 1
    layer.brush_size = 40
    with layer.block_history():
        layer.paint((2, 1, 5), 2)
    assert np.array_equal(layer.data == 1, before)
    widget.table.setCurrentCell(widget.row_of_value(1), NAME_COLUMN)
    assert "locked" in widget.status.value


def test_rename_add_and_delete(docked):
    _, layer, _, widget = docked
    widget.table.item(1, NAME_COLUMN).setText("spleen")
    assert seg.label_names(layer)[2] == "spleen"
    widget.add()
    assert widget.table.rowCount() == 3 and layer.selected_label == 3
    widget.table.setCurrentCell(widget.row_of_value(2), NAME_COLUMN)
    widget.delete()
    assert widget.row_of_value(2) is None and not np.any(layer.data == 2)
    assert "Ctrl+Z" in widget.status.value


def test_the_dock_fits_and_its_table_scrolls(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    data, kwargs, _ = labels_layer_data(_organs(count=30))
    viewer.add_labels(data, **kwargs)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    QApplication.processEvents()
    scroll = dock.widget().findChild(QScrollArea)
    assert scroll.widget().isAncestorOf(widget.table)
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    table = widget.table
    assert table.height() <= TABLE_HEIGHT_PX < table.verticalHeader().length()
    before = dock.minimumSizeHint()
    widget.status.value = "a long line " * 60
    QApplication.processEvents()
    assert dock.minimumSizeHint().height() == before.height()
    assert dock.minimumSizeHint().width() <= before.width()


def test_under_the_orthogonal_views_the_first_rows_stay_in_view(make_napari_viewer, qtbot):
    # Stacked under a tall dock, the list keeps its minimum: the form and the first rows show.
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    data, kwargs, _ = labels_layer_data(_organs())
    viewer.add_labels(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-medai", "Orthogonal views")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    qtbot.wait(300)
    table = widget.table
    first = table.item(0, NAME_COLUMN)
    shown = widget.native.visibleRegion().boundingRect()
    offset = table.viewport().mapTo(widget.native, QPoint())
    row_in_dock = table.visualItemRect(first).translated(offset)
    assert shown.contains(row_in_dock)


def test_segments_saved_as_nrrd_come_back_in_the_list(make_napari_viewer, tmp_path):
    """Names, colours, locks and status through a Slicer NRRD, opened with 'Open segmentation'."""
    viewer = make_napari_viewer()
    data, kwargs, _ = labels_layer_data(_organs())
    layer = viewer.add_labels(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    widget.table.item(1, NAME_COLUMN).setText("spleen")
    widget.set_color(2, QColor(0, 128, 255))
    _cell(widget, 1, 2).setChecked(True)
    _cell(widget, 2, 4).setCurrentText("in progress")
    path = write_label_map(seg.label_map_with_segments(layer), tmp_path / "organs.seg.nrrd")
    data, kwargs, _ = labels_layer_data(read_segmentation(path))
    viewer.add_labels(data, **kwargs)
    QApplication.processEvents()
    rows = {s.value: s for s in seg.segments(widget.layer)}
    assert widget.layer is not layer
    assert rows[2].name == "spleen" and rows[2].status == "in progress"
    assert rows[2].color == pytest.approx((0, 128 / 255, 1), abs=1e-6)
    assert seg.locked_labels(widget.layer) == {1}
    assert _cell(widget, 1, 2).isChecked()


def test_the_dock_keeps_torch_out_of_napari():
    """Opening the dock and working its rows imports neither torch nor MONAI (fresh process)."""
    script = """
import sys, numpy as np, napari
from qtpy.QtWidgets import QApplication
v = napari.Viewer(show=False)
v.add_labels(np.eye(8, dtype=np.uint8)[None].repeat(4, 0), scale=(2, 1, 1))
_, w = v.window.add_plugin_dock_widget("napari-medai", "Segment list")
w.add(); w.table.setCurrentCell(0, 3); w.delete()
QApplication.processEvents()
print(sorted(m for m in ("torch", "monai") if m in sys.modules))
"""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", time.monotonic() - started

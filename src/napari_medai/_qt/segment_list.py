"""Dock widget "Segment list": the labels of a Labels layer, as 3D Slicer lists segments.

One row per label: colour (click to change), visibility, lock, name (double-click
to rename), status and volume in mL; clicking a row selects that label for
painting. The state lives on the layer (:mod:`napari_medai._napari.segments`),
so it is saved with the mask. The table has a bounded height and scrolls; the
form scrolls inside the dock; the status line wraps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from napari_medai._napari import segments as seg
from napari_medai._qt.layer_pickers import follow_layer_list, layers_of
from napari_medai._qt.parts import narrow, scroll_column, wrapping
from napari_medai.core.io.writing import SEGMENT_STATUSES

if TYPE_CHECKING:
    import napari

#: The table's height: about eight rows, then it scrolls instead of growing the dock.
TABLE_HEIGHT_PX = 260
#: Quiet time after an edit before volumes are counted again (off the GUI thread).
RECOUNT_MS = 400
COLUMNS = ("", "Show", "Lock", "Name", "Status", "mL")
NAME_COLUMN = COLUMNS.index("Name")
VOLUME_COLUMN = COLUMNS.index("mL")
#: Column widths; the name column takes what is left (and at least its own width here).
COLUMN_WIDTHS_PX = (28, 40, 40, 96, 122, 60)
ROW_HEIGHT_PX = 26
#: The dock's least height: its form and a few rows stay in view under a taller dock
#: (Orthogonal views) without passing the 220 px every small dock keeps to.
MIN_HEIGHT_PX = 190
EMPTY_MESSAGE = "Pick or add a Labels layer to list its segments"


class SegmentListWidget(Container):
    """The segments of the picked Labels layer: edit them, pick one to paint."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.labels_layer = ComboBox(
            label="Labels", annotation=Labels, choices=layers_of(napari_viewer.layers, Labels)
        )
        narrow(self.labels_layer.native)  # a long layer name must not widen the dock
        self.add_button = PushButton(text="Add segment")
        self.delete_button = PushButton(text="Delete segment")
        self.status = wrapping(Label(value=EMPTY_MESSAGE))
        self.table = _table()
        super().__init__(labels=False)
        self.form = Container(
            widgets=[self.labels_layer, self.add_button, self.delete_button],
            labels=True,
            scrollable=True,
        )
        scroll_column(self, self.form, self.table, self.status.native)
        self.native.setMinimumHeight(MIN_HEIGHT_PX)
        seg.defer = lambda task: QTimer.singleShot(0, task)
        self._voxels: dict[int, int] = {}
        self._layer: Labels | None = None
        self._filling = False
        self._recount = QTimer(self.native, singleShot=True, interval=RECOUNT_MS)
        self._recount.timeout.connect(self._count)
        self.labels_layer.changed.connect(self._show_layer)
        self.add_button.changed.connect(self.add)
        self.delete_button.changed.connect(self.delete)
        self.table.itemChanged.connect(self._renamed)
        self.table.currentCellChanged.connect(lambda row, *_: self._select(row))
        follow_layer_list(napari_viewer.layers, self._refresh_layers)
        napari_viewer.layers.selection.events.active.connect(self._refresh_layers)
        self._refresh_layers()

    @property
    def layer(self) -> Labels | None:
        """The Labels layer listed."""
        return self._layer

    def _refresh_layers(self, _event: Any = None) -> None:
        self.labels_layer.reset_choices()
        active = self._viewer.layers.selection.active
        if isinstance(active, Labels) and self.labels_layer.value is not active:
            self.labels_layer.value = active
        self._show_layer()

    def _show_layer(self, _event: Any = None) -> None:
        """List the picked layer; follow its edits."""
        layer = self.labels_layer.value
        if layer is self._layer:
            return
        if self._layer is not None:
            self._layer.events.paint.disconnect(self._edited)
            self._layer.events.set_data.disconnect(self._edited)
        self._layer = layer
        self.add_button.enabled = self.delete_button.enabled = layer is not None
        if layer is None:
            self._voxels = {}
            self._fill()
            self.status.value = EMPTY_MESSAGE
            return
        self._voxels = seg.label_voxels(layer)
        seg.adopt(layer, set(self._voxels))
        layer.events.paint.connect(self._edited)
        layer.events.set_data.connect(self._edited)
        self._fill()
        self.status.value = "Click a segment to paint it; double-click its name to rename it"

    def _edited(self, _event: Any = None) -> None:
        self._recount.start()

    def _count(self) -> None:
        """Count every label's voxels in a thread, then show the volumes."""
        layer = self._layer
        if layer is None:
            return
        worker = create_worker(seg.label_voxels, layer)
        worker.returned.connect(lambda voxels: self._counted(layer, voxels))
        worker.start()

    def _counted(self, layer: Labels, voxels: dict[int, int]) -> None:
        """Show new volumes in place (selection, scroll and an open name editor stay)."""
        if layer is not self._layer:
            return
        self._voxels = voxels
        listed = [self.value_of_row(row) for row in range(self.table.rowCount())]
        if listed == [segment.value for segment in seg.segments(layer, set(voxels))]:
            for row, value in enumerate(listed):
                self._show_volume(row, value)
        else:
            self._fill()

    def _fill(self) -> None:
        """One row per segment of the layer."""
        layer = self._layer
        rows = seg.segments(layer, set(self._voxels)) if layer is not None else []
        self._filling = True
        self.table.setRowCount(len(rows))
        for row, segment in enumerate(rows):
            self._fill_row(row, segment)
        self._filling = False
        if layer is not None:
            self._mark_selected(layer.selected_label)

    def _fill_row(self, row: int, segment: seg.Segment) -> None:
        value = segment.value
        swatch = QPushButton()
        swatch.setToolTip(f"Colour of label {value}: click to change")
        swatch.setStyleSheet(_swatch_style(segment.color))
        swatch.clicked.connect(lambda: self._pick_color(value))
        self.table.setCellWidget(row, 0, swatch)
        for column, checked, setter, tip in (
            (1, segment.visible, seg.set_visible, "Show or hide"),
            (2, segment.locked, self._lock, "Lock: never painted over, erased or filled"),
        ):
            box = QCheckBox()
            box.setChecked(checked)
            box.setToolTip(tip)
            box.toggled.connect(lambda on, s=setter: s(self._layer, value, on))
            self.table.setCellWidget(row, column, box)
        name = QTableWidgetItem(segment.name)
        name.setData(Qt.ItemDataRole.UserRole, value)
        name.setToolTip(f"label {value}")
        self.table.setItem(row, NAME_COLUMN, name)
        status = QComboBox()
        status.addItems(SEGMENT_STATUSES)
        status.setCurrentText(segment.status)
        status.currentTextChanged.connect(lambda text: seg.set_status(self._layer, value, text))
        self.table.setCellWidget(row, COLUMNS.index("Status"), status)
        volume = QTableWidgetItem()
        volume.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
        volume.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.table.setItem(row, VOLUME_COLUMN, volume)
        self._show_volume(row, value)

    def _show_volume(self, row: int, value: int) -> None:
        """Write label ``value``'s volume into its row's mL cell (voxels and mm3 in its tip)."""
        voxels = self._voxels.get(value, 0)
        ml = voxels * seg.voxel_ml(self._layer)
        item = self.table.item(row, VOLUME_COLUMN)
        filling, self._filling = self._filling, True
        item.setText(seg.format_ml(ml))
        item.setToolTip(f"{voxels} voxels, {ml * 1000:g} mm3")
        self._filling = filling

    def value_of_row(self, row: int) -> int | None:
        """The label value listed in ``row``."""
        item = self.table.item(row, NAME_COLUMN)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def row_of_value(self, value: int) -> int | None:
        """The row listing label ``value``."""
        rows = range(self.table.rowCount())
        return next((row for row in rows if self.value_of_row(row) == value), None)

    def _mark_selected(self, value: int) -> None:
        row = self.row_of_value(value)
        if row is not None and row != self.table.currentRow():
            self.table.setCurrentCell(row, NAME_COLUMN)

    def _select(self, row: int) -> None:
        """Paint with the segment of ``row``; say so when it is locked."""
        value = self.value_of_row(row)
        if self._filling or value is None or self._layer is None:
            return
        self._layer.selected_label = value
        name = self.table.item(row, NAME_COLUMN).text()
        locked = value in seg.locked_labels(self._layer)
        self.status.value = (
            f"'{name}' is locked: unlock it to paint it"
            if locked
            else f"Painting '{name}' (label {value})"
        )

    def _lock(self, layer: Labels, value: int, locked: bool) -> None:
        seg.set_locked(layer, value, locked)
        word = "locked: brush, fill and eraser leave it" if locked else "unlocked"
        self.status.value = f"Label {value} {word}"

    def _renamed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() != NAME_COLUMN or self._layer is None:
            return
        seg.rename(self._layer, int(item.data(Qt.ItemDataRole.UserRole)), item.text())

    def _pick_color(self, value: int) -> None:
        layer = self._layer
        if layer is None:
            return
        current = next(s.color for s in seg.segments(layer) if s.value == value)
        chosen = QColorDialog.getColor(QColor.fromRgbF(*current), self.native, "Segment colour")
        if chosen.isValid():
            self.set_color(value, chosen)

    def set_color(self, value: int, color: QColor) -> None:
        """Colour segment ``value`` (the colour button's dialog calls this)."""
        rgb = (color.redF(), color.greenF(), color.blueF())
        seg.set_color(self._layer, value, rgb)
        self.table.cellWidget(self.row_of_value(value), 0).setStyleSheet(_swatch_style(rgb))

    def add(self, _event: Any = None) -> None:
        """Add a segment with the next free label value and select it for painting."""
        if self._layer is None:
            return
        value = seg.add_segment(self._layer, set(self._voxels))
        self._fill()
        self._mark_selected(value)
        self.status.value = f"Added label {value}: paint it, double-click its name to rename it"

    def delete(self, _event: Any = None) -> None:
        """Erase the selected segment's voxels (Ctrl+Z restores them) and remove its row."""
        row = self.table.currentRow()
        value = self.value_of_row(row) if row >= 0 else None
        if self._layer is None or value is None:
            self.status.value = "Click the segment to delete first"
            return
        try:
            erased = seg.delete_segment(self._layer, value)
        except ValueError as error:
            self.status.value = f"Delete refused: {error}"
            return
        self._voxels.pop(value, None)
        self._fill()
        self.status.value = f"Deleted label {value}: {erased} voxels erased (Ctrl+Z restores them)"


def _swatch_style(rgb: tuple[float, ...]) -> str:
    """The colour button's style sheet: filled with the segment's colour."""
    return f"background-color: {QColor.fromRgbF(*rgb).name()};"


def _table() -> QTableWidget:
    """The segment table: bounded height, scrolls; name column stretches."""
    table = QTableWidget(0, len(COLUMNS))
    table.setHorizontalHeaderLabels(COLUMNS)
    table.verticalHeader().setVisible(False)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)
    table.setFixedHeight(TABLE_HEIGHT_PX)
    table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT_PX)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    header = table.horizontalHeader()
    for column, width in enumerate(COLUMN_WIDTHS_PX):
        header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(column, width)
    header.setSectionResizeMode(NAME_COLUMN, QHeaderView.ResizeMode.Stretch)
    bar = table.verticalScrollBar().sizeHint().width()
    table.setMinimumWidth(sum(COLUMN_WIDTHS_PX) + bar + 2 * table.frameWidth())
    return table

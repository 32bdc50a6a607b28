"""Dock widget "Label statistics": a table of voxel counts, mL and intensities, saved as CSV.

One column that scrolls inside the dock; the table has a bounded height and
scrolls itself, and the status line wraps, so neither grows the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import Container, FileEdit, Label, PushButton, Table
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QStyledItemDelegate

from napari_medai._napari.evaluation import statistics_input
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.layer_pickers import follow_layer_list, refresh_scan_pickers, scan_pickers
from napari_medai._qt.parts import ask_overwrite, scroll_column, wrapping
from napari_medai.core.errors import MedaiError
from napari_medai.core.evaluation.statistics import (
    CSV_COLUMNS,
    LabelStatistics,
    statistics_csv,
    statistics_job,
)
from napari_medai.core.files import atomic_write

if TYPE_CHECKING:
    import napari

EMPTY_MESSAGE = "Pick a Labels layer and press Measure"
_HEADERS = ("label", "name", "voxels", "mL", "mean", "std", "min", "max")
#: The table's height: about six rows, then it scrolls instead of growing the dock.
TABLE_HEIGHT_PX = 180


def _cell(value: object, decimals: int = 1) -> object:
    """Display text: mL to 2 decimals, intensities to 1 (the CSV keeps full precision)."""
    if value is None:
        return ""
    return f"{value:.{decimals}f}" if isinstance(value, float) else value


class StatisticsWidget(Container):
    """Per label: voxel count, volume in mL, and mean/std/min/max of the scan under it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.labels_layer, self.image_layer = scan_pickers(napari_viewer.layers)
        self.measure_button = PushButton(text="Measure")
        self.table = Table(value={"data": [], "index": [], "columns": list(_HEADERS)})
        self.table.read_only = True
        self.table.native.verticalHeader().setVisible(False)
        # magicgui's delegate shows every number with 4 decimals; cells hold our own text.
        self.table.native.setItemDelegate(QStyledItemDelegate(self.table.native))
        self.status = wrapping(Label(value=EMPTY_MESSAGE))
        self.csv_path = FileEdit(label="CSV", mode="w", filter="*.csv")
        self.save_button = PushButton(text="Save CSV")
        super().__init__(labels=False)
        fields = [self.labels_layer, self.image_layer, self.measure_button]
        self.form = Container(
            widgets=[*fields, self.csv_path, self.save_button], labels=True, scrollable=True
        )
        self.table.native.setFixedHeight(TABLE_HEIGHT_PX)
        self.runner = JobRunner()
        # Under Measure, at full width: progress, status and the table, then the CSV fields.
        rows = self.form.native.layout()
        for index, part in enumerate((self.runner, self.status.native, self.table.native)):
            rows.insertWidget(len(fields) + index, part)
        scroll_column(self, self.form)
        self.rows: list[LabelStatistics] = []
        self.measure_button.changed.connect(self.measure)
        self.save_button.changed.connect(self.save_csv)
        self.labels_layer.changed.connect(self._update)
        self.csv_path.changed.connect(self._update)
        self.runner.runningChanged.connect(self._update)
        layers = napari_viewer.layers
        follow_layer_list(layers, self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, _event=None) -> None:
        refresh_scan_pickers(self.labels_layer, self.image_layer)
        self._update()

    def _update(self, _event=None) -> None:
        busy = self.runner.running
        has_labels = self.labels_layer.value is not None
        self.measure_button.enabled = has_labels and not busy
        self.measure_button.tooltip = "" if has_labels else "Add or pick a Labels layer"
        can_save = bool(self.rows) and Path(str(self.csv_path.value)).name not in ("", ".")
        self.save_button.enabled = can_save
        self.save_button.tooltip = "" if can_save else "Measure first, then choose a CSV file"

    def measure(self, _event=None) -> None:
        """Run the statistics job on the picked layers."""
        if self.labels_layer.value is None:
            show_info(EMPTY_MESSAGE)
            return
        self._show_rows([])
        try:
            labels, image = statistics_input(self.labels_layer.value, self.image_layer.value)
        except MedaiError as error:
            self.status.value = f"Measure refused: {error}"
            show_error(f"Measure refused: {error}")
            return
        self.status.value = ""
        self.runner.start(
            lambda: statistics_job(labels, image),
            self._show,
            on_finished=self._finished,
            title="Statistics",
        )

    def _show_rows(self, rows: list[LabelStatistics]) -> None:
        """Fill the table with ``rows`` (empty it for none) and let Save follow."""
        self.rows = rows
        data = [
            [_cell(getattr(row, key), 2 if key == "volume_ml" else 1) for key in CSV_COLUMNS]
            for row in rows
        ]
        self.table.value = {
            "data": data,
            "index": list(range(len(data))),
            "columns": list(_HEADERS),
        }
        self.table.native.resizeColumnsToContents()
        self._update()

    def _show(self, result) -> None:
        rows, warnings = result
        self._show_rows(rows)
        total = sum(row.volume_ml for row in rows)
        summary = f"{len(rows)} label(s), {total:.1f} mL in all"
        self.status.value = "; ".join([summary, *warnings]) if rows else "the layer is empty"

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome is not JobOutcome.DONE:
            self.status.value = ""  # the runner's line says what happened

    def save_csv(self, _event=None) -> None:
        """Write the table as CSV (atomically; asks before replacing a file)."""
        path = Path(str(self.csv_path.value))
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        if path.exists() and not ask_overwrite(self.native, [path]):
            return
        text = statistics_csv(self.rows)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)
        self.status.value = f"saved {path.name}"

"""Dock widget "Evaluate": Dice, IoU, HD95, ASSD and surface Dice of two Labels layers, in mm.

The scoring imports MONAI (its surface distances), so it runs in the worker
process through the catalogue; napari's process never imports torch for it.
One column scrolls inside the dock; the table has a bounded height.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, Table
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QStyledItemDelegate

from napari_medai._napari.evaluation import evaluation_input
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.layer_pickers import follow_layer_list, layers_of
from napari_medai._qt.parts import ask_overwrite, narrow, scroll_column, wrapping
from napari_medai._qt.stats_widget import TABLE_HEIGHT_PX
from napari_medai.core import catalogue
from napari_medai.core.errors import MedaiError
from napari_medai.core.evaluation.metrics import EvaluationConfig, EvaluationResult
from napari_medai.core.files import atomic_write

if TYPE_CHECKING:
    import napari

EMPTY_MESSAGE = "Pick a prediction and a reference Labels layer, then Evaluate"
_COLUMNS = ("label", "predicted", "name", "Dice", "IoU", "HD95 mm", "ASSD mm", "surface Dice")
_FIELDS = ("value", "predicted_value", "name", "dice", "iou", "hd95_mm", "assd_mm", "surface_dice")


def _cell(value: object) -> object:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else value


class EvaluateWidget(Container):
    """Compare a predicted Labels layer with a reference; save the scores as JSON."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self._layers = layers_of(napari_viewer.layers, Labels)
        self.prediction = ComboBox(label="Prediction", annotation=Labels, choices=self._layers)
        self.reference = ComboBox(label="Reference", annotation=Labels, choices=self._layers)
        for picker in (self.prediction, self.reference):  # long layer names: never wider
            narrow(picker.native)
        self.tolerance = FloatSpinBox(
            label="Tolerance (mm)", value=2.0, min=0.1, max=50.0, step=0.5
        )
        self.tolerance.tooltip = "surface Dice counts surface points closer than this"
        self.evaluate_button = PushButton(text="Evaluate")
        self.status = wrapping(Label(value=EMPTY_MESSAGE))
        self.table = Table(value={"data": [], "index": [], "columns": list(_COLUMNS)})
        self.table.read_only = True
        self.table.native.verticalHeader().setVisible(False)
        # magicgui's delegate shows every number with 4 decimals; cells hold our own text.
        self.table.native.setItemDelegate(QStyledItemDelegate(self.table.native))
        self.table.native.setFixedHeight(TABLE_HEIGHT_PX)
        self.json_path = FileEdit(label="JSON", mode="w", filter="*.json")
        self.save_button = PushButton(text="Save JSON")
        super().__init__(labels=False)
        fields = [self.prediction, self.reference, self.tolerance, self.evaluate_button]
        self.form = Container(
            widgets=[*fields, self.json_path, self.save_button], labels=True, scrollable=True
        )
        self.runner = JobRunner()
        # Under Evaluate, at full width: progress, status and the table, then the JSON fields.
        rows = self.form.native.layout()
        for index, part in enumerate((self.runner, self.status.native, self.table.native)):
            rows.insertWidget(len(fields) + index, part)
        scroll_column(self, self.form)
        self.result: EvaluationResult | None = None
        #: The names of the layers the result compares (the pickers may have moved on since).
        self._compared: tuple[str, str] = ("", "")
        #: The reason Evaluate was disabled, as last shown in the status line.
        self._reason = ""
        self.evaluate_button.changed.connect(self.evaluate)
        self.save_button.changed.connect(self.save_json)
        for widget in (self.prediction, self.reference, self.json_path):
            widget.changed.connect(self._update)
        self.runner.runningChanged.connect(self._update)
        layers = napari_viewer.layers
        follow_layer_list(layers, self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, _event=None) -> None:
        self.prediction.reset_choices()
        self.reference.reset_choices()
        layers = self._layers()
        if len(layers) >= 2 and self.prediction.value is self.reference.value:
            self.reference.value = next(
                layer for layer in layers if layer is not self.prediction.value
            )
        self._update()

    def blocker(self) -> str:
        """Why Evaluate cannot run now ("" when it can)."""
        if self.runner.running:
            return "an evaluation is running"
        if len(self._layers()) < 2:
            return "Evaluate needs two Labels layers: a prediction and a reference"
        if self.prediction.value is self.reference.value:
            return "Pick two different Labels layers"
        for layer in (self.prediction.value, self.reference.value):
            if layer.ndim != 3:
                return f"'{layer.name}' is {layer.ndim}D: Evaluate compares 3D Labels layers"
        return ""

    def _update(self, _event=None) -> None:
        reason = self.blocker()
        self.evaluate_button.enabled = not reason
        self.evaluate_button.tooltip = reason
        if not self.runner.running and self.result is None:
            if reason:
                self.status.value = reason
            elif self.status.value == self._reason:  # the reason is past
                self.status.value = ""
            self._reason = reason
        can_save = self.result is not None and Path(str(self.json_path.value)).name not in ("", ".")
        self.save_button.enabled = can_save
        self.save_button.tooltip = "" if can_save else "Evaluate first, then choose a JSON file"

    def evaluate(self, _event=None) -> None:
        """Run the evaluation job (torch and MONAI are imported in the worker)."""
        reason = self.blocker()
        if reason:
            show_info(reason)
            return
        self._show_scores(None)
        try:
            prediction, reference = evaluation_input(self.prediction.value, self.reference.value)
        except MedaiError as error:
            self.status.value = f"Evaluate refused: {error}"
            show_error(f"Evaluate refused: {error}")
            return
        self.status.value = ""
        self._compared = (self.prediction.value.name, self.reference.value.name)
        config = EvaluationConfig(float(self.tolerance.value))
        job = partial(catalogue.EVALUATE_SEGMENTATION, prediction, reference, config)
        self.runner.start(job, self._show, on_finished=self._finished, title="Evaluate")

    def _show_scores(self, result: EvaluationResult | None) -> None:
        """Fill the table with ``result``'s scores (empty it for None) and let Save follow."""
        self.result = result
        data = (
            [[_cell(getattr(s, key)) for key in _FIELDS] for s in result.labels] if result else []
        )
        self.table.value = {
            "data": data,
            "index": list(range(len(data))),
            "columns": list(_COLUMNS),
        }
        self.table.native.resizeColumnsToContents()
        self._update()

    def _show(self, result: EvaluationResult) -> None:
        self._show_scores(result)
        scored = f"{result.matching.summary()}: {len(result.labels)} label(s) scored"
        self.status.value = "; ".join([scored, *result.warnings])

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome is not JobOutcome.DONE:
            self.status.value = ""  # the runner's line says what happened

    def save_json(self, _event=None) -> None:
        """Write the scores as JSON (atomically; asks before replacing a file)."""
        if self.result is None:
            return
        path = Path(str(self.json_path.value))
        if path.suffix.lower() != ".json":
            path = path.with_name(path.name + ".json")
        if path.exists() and not ask_overwrite(self.native, [path]):
            return
        prediction, reference = self._compared
        summary = {
            "prediction": prediction,
            "reference": reference,
            **self.result.to_dict(),
        }
        text = json.dumps(summary, indent=2, allow_nan=False)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)
        self.status.value = f"saved {path.name}"

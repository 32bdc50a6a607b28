"""Dock widget "Evaluate": Dice, IoU, HD95, ASSD and surface Dice of two Labels layers, in mm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, Table
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QStyledItemDelegate

from napari_medai._napari.evaluation import evaluation_input
from napari_medai._qt.export_widget import ask_overwrite
from napari_medai._qt.job_runner import JobRunner
from napari_medai._qt.parts import follow_layer_list, layers_of
from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write

if TYPE_CHECKING:
    import napari

    from napari_medai.core.evaluation.metrics import EvaluationResult

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
        self.tolerance = FloatSpinBox(
            label="Tolerance (mm)", value=2.0, min=0.1, max=50.0, step=0.5
        )
        self.tolerance.tooltip = "surface Dice counts surface points closer than this"
        self.evaluate_button = PushButton(text="Evaluate")
        self.status = Label(value=EMPTY_MESSAGE)
        self.status.native.setWordWrap(True)
        self.table = Table(value={"data": [], "index": [], "columns": list(_COLUMNS)})
        self.table.read_only = True
        self.table.native.verticalHeader().setVisible(False)
        # magicgui's delegate shows every number with 4 decimals; cells hold our own text.
        self.table.native.setItemDelegate(QStyledItemDelegate(self.table.native))
        self.json_path = FileEdit(label="JSON", mode="w", filter="*.json")
        self.save_button = PushButton(text="Save JSON")
        super().__init__(
            widgets=[
                self.prediction,
                self.reference,
                self.tolerance,
                self.evaluate_button,
                self.status,
                self.table,
                self.json_path,
                self.save_button,
            ],
            labels=True,
        )
        self.table.min_height = 160
        self.runner = JobRunner()
        self.native.layout().addWidget(self.runner)
        self.result: EvaluationResult | None = None
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
        if reason and not self.runner.running and self.result is None:
            self.status.value = reason
        can_save = self.result is not None and Path(str(self.json_path.value)).name not in ("", ".")
        self.save_button.enabled = can_save
        self.save_button.tooltip = "" if can_save else "Evaluate first, then choose a JSON file"

    def evaluate(self, _event=None) -> None:
        """Run the evaluation job (torch and MONAI are imported in the worker)."""
        reason = self.blocker()
        if reason:
            show_info(reason)
            return
        try:
            prediction, reference = evaluation_input(self.prediction.value, self.reference.value)
        except MedaiError as error:
            show_error(f"Evaluate failed: {error}")
            return
        tolerance = float(self.tolerance.value)

        def job():
            from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job

            return evaluate_job(prediction, reference, EvaluationConfig(tolerance))

        self.runner.start(job, self._show, title="Evaluate")

    def _show(self, result: EvaluationResult) -> None:
        self.result = result
        data = [[_cell(getattr(s, key)) for key in _FIELDS] for s in result.labels]
        self.table.value = {
            "data": data,
            "index": list(range(len(data))),
            "columns": list(_COLUMNS),
        }
        self.table.native.resizeColumnsToContents()
        scored = f"{result.matching.summary()}: {len(result.labels)} label(s) scored"
        self.status.value = "; ".join([scored, *result.warnings])
        self._update()

    def save_json(self, _event=None) -> None:
        """Write the scores as JSON (atomically; asks before replacing a file)."""
        if self.result is None:
            return
        path = Path(str(self.json_path.value))
        if path.suffix.lower() != ".json":
            path = path.with_name(path.name + ".json")
        if path.exists() and not ask_overwrite(self.native, [path]):
            return
        summary = {
            "prediction": self.prediction.value.name if self.prediction.value else None,
            "reference": self.reference.value.name if self.reference.value else None,
            **self.result.to_dict(),
        }
        text = json.dumps(summary, indent=2, allow_nan=False)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)
        self.status.value = f"saved {path.name}"

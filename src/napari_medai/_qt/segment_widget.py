"""Dock widget "Segment": run a model on an image layer, result as layers on its grid.

Thin by design: it reads its fields into a :class:`SegmentConfig`, runs
:func:`load_and_segment_job` through the :class:`JobRunner` (progress, Cancel,
errors as notifications) and hands the result to
:func:`show_segmentation`, which adds or updates the layers.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medai._napari.segmentation import (
    SegmentationTarget,
    is_segmentable,
    load_and_segment_job,
    result_layer_data,
    segmentation_input,
    show_segmentation,
)
from napari_medai._qt.job_runner import JobRunner
from napari_medai.core.errors import MedaiError
from napari_medai.core.models.formats import WEIGHT_SUFFIXES
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.registry import list_models
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

DEVICES = ("auto", "cpu", "cuda", "mps")
LOAD_FILE = "Load from file..."
LOAD_FOLDER = "Load from folder..."
#: Item data of the two entries that open a file dialog instead of naming a model.
_LOAD_ACTIONS = {LOAD_FILE: "file", LOAD_FOLDER: "folder"}
_SOURCE_ROLE = Qt.ItemDataRole.UserRole
_MODEL_FILES = "Model files ({});;All files (*)".format(
    " ".join(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)
)


class _ModelCombo(QComboBox):
    """A combo box that says when it is about to open, so the list can be re-read."""

    opening = Signal()

    def showPopup(self) -> None:  # noqa: N802 (Qt's name)
        self.opening.emit()
        super().showPopup()


class SegmentWidget(QWidget):
    """Pick an image layer and a model, Run; the mask appears on the image's grid.

    Running again with the same image and model replaces the earlier result's
    data, unless "New layer each run" is ticked. Models are the registry's
    available entries plus files and folders the user loads.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        self._images: list[Layer] = []
        self._loaded_sources: list[str] = []
        self._model_index = -1
        #: The layers the last finished run showed (labels first).
        self.output_layers: list[Layer] = []

        self.image_combo = QComboBox()
        self.model_combo = _ModelCombo()
        self.trust_check = QCheckBox("Trust this MONAI bundle")
        self.trust_check.setToolTip(
            "MONAI bundle configs can run any Python code. Tick only for bundles from "
            "authors you trust; untrusted bundles are refused."
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("auto: CUDA GPU, then Apple GPU, then the CPU")
        self.tta_check = QCheckBox("Test-time augmentation (average over flips)")
        self.probability_check = QCheckBox("Probability map")
        self.uncertainty_check = QCheckBox("Uncertainty map")
        self.new_layer_check = QCheckBox("New layer each run")
        self.new_layer_check.setToolTip("Otherwise a run updates the layers of the previous run")
        self.run_button = QPushButton("Run")
        self.runner = JobRunner()

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.trust_check)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.tta_check)
        outputs = QHBoxLayout()
        outputs.addWidget(self.probability_check)
        outputs.addWidget(self.uncertainty_check)
        form.addRow("Also show", outputs)
        form.addRow("", self.new_layer_check)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner)
        layout.addStretch(1)

        self.refresh_models()
        self.model_combo.opening.connect(self.refresh_models)
        self.model_combo.currentIndexChanged.connect(self._on_model_chosen)
        self.image_combo.currentIndexChanged.connect(self._update_run_button)
        self.run_button.clicked.connect(self.run)
        self.runner.runningChanged.connect(self._update_run_button)
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._on_layer_removed)
        layers.events.moved.connect(self._refresh_images)
        for layer in layers:
            layer.events.name.connect(self._refresh_images)
        self._refresh_images()

    # Image picker ---------------------------------------------------------------

    def current_image(self) -> Layer | None:
        """The image layer picked for segmentation, or None."""
        index = self.image_combo.currentIndex()
        return self._images[index] if 0 <= index < len(self._images) else None

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_images)
        self._refresh_images()

    def _on_layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._refresh_images)
        self._refresh_images()

    def _refresh_images(self, _event: Any = None) -> None:
        """List the viewer's segmentable images; keep the pick, else take the active one."""
        current = self.current_image()
        self._images = [layer for layer in self._viewer.layers if is_segmentable(layer)]
        if current not in self._images:
            active = self._viewer.layers.selection.active
            current = active if active in self._images else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([layer.name for layer in self._images])
        if current is not None:
            self.image_combo.setCurrentIndex(self._images.index(current))
        self.image_combo.blockSignals(False)
        self._update_run_button()

    # Model picker ---------------------------------------------------------------

    def current_model_source(self) -> str | None:
        """The registry name or path of the picked model, or None."""
        source = self.model_combo.currentData(_SOURCE_ROLE)
        return None if source in _LOAD_ACTIONS.values() else source

    def refresh_models(self) -> None:
        """Available registry models, then models loaded from disk, then the load entries."""
        current = self.current_model_source()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in list_models():
            source = entry.name if entry.location is None else str(entry.location)
            self.model_combo.addItem(entry.name, source)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, entry.description, Qt.ItemDataRole.ToolTipRole
            )
        for source in self._loaded_sources:
            self.model_combo.addItem(Path(source).name, source)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, source, Qt.ItemDataRole.ToolTipRole
            )
        for text, action in _LOAD_ACTIONS.items():
            self.model_combo.addItem(text, action)
        index = self.model_combo.findData(current, _SOURCE_ROLE) if current else 0
        if self.model_combo.itemData(index, _SOURCE_ROLE) in _LOAD_ACTIONS.values():
            index = -1
        self.model_combo.setCurrentIndex(index)
        self._model_index = index
        self.model_combo.blockSignals(False)
        self._update_run_button()

    def add_model_source(self, path: str | Path) -> None:
        """Offer the model at ``path`` (file or folder) in the picker and pick it."""
        source = str(path)
        if source not in self._loaded_sources:
            self._loaded_sources.append(source)
        self.refresh_models()
        self.model_combo.setCurrentIndex(self.model_combo.findData(source, _SOURCE_ROLE))

    def _on_model_chosen(self, index: int) -> None:
        action = self.model_combo.itemData(index, _SOURCE_ROLE)
        if action not in _LOAD_ACTIONS.values():
            self._model_index = index
            self._update_run_button()
            return
        if action == "file":
            path, _filter = QFileDialog.getOpenFileName(self, "Load a model file", "", _MODEL_FILES)
        else:
            path = QFileDialog.getExistingDirectory(
                self, "Load a model folder (model package or MONAI bundle)"
            )
        if path:
            self.add_model_source(path)
            return
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(self._model_index)
        self.model_combo.blockSignals(False)

    # Running --------------------------------------------------------------------

    def config(self) -> SegmentConfig:
        """The settings of the widget as the core config (the CLI fills the same)."""
        return SegmentConfig(
            device=self.device_combo.currentText(),
            tta=self.tta_check.isChecked(),
            probabilities=self.probability_check.isChecked(),
            uncertainty=self.uncertainty_check.isChecked(),
        )

    def _update_run_button(self, _value: Any = None) -> None:
        ready = self.current_image() is not None and self.current_model_source() is not None
        self.run_button.setEnabled(ready and not self.runner.running)

    def run(self) -> None:
        """Start segmenting the picked image with the picked model."""
        image, source = self.current_image(), self.current_model_source()
        if image is None or source is None or self.runner.running:
            return
        try:
            volume = segmentation_input(image)
        except MedaiError as error:
            show_error(f"Segment failed: {error}")
            return
        job = partial(
            load_and_segment_job, source, self.trust_check.isChecked(), volume, self.config()
        )
        show = partial(
            self._show, SegmentationTarget.of(image, source), self.new_layer_check.isChecked()
        )
        self.runner.start(job, show, title="Segment")

    def _show(
        self,
        target: SegmentationTarget,
        new_layer: bool,
        outcome: tuple[LoadedModel, SegmentResult],
    ) -> None:
        model, result = outcome
        layer_data = result_layer_data(result, target, model.name)
        self.output_layers = show_segmentation(self._viewer, layer_data, new_layer)

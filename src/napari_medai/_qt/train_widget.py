"""Dock widget "Train": paint a few slices, train, predict, correct, repeat.

Thin by design: the fields become a :class:`TrainConfig`, :func:`train_job`
runs in the :class:`JobRunner` (progress, Stop, errors as notifications), the
live plot shows loss and validation Dice, and the napari side
(:mod:`napari_medai._napari.training`) turns predictions into layers and
copies accepted corrections back into the annotation layer.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medai._napari.segmentation import is_segmentable, segmentation_input
from napari_medai._napari.training import (
    Review,
    displayed_slice,
    go_to_slice,
    predict_job,
    show_prediction,
    train_job,
    training_pair,
)
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.plot import LivePlot
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Progress
from napari_medai.core.models.card import CARD_FILE, ModelCard
from napari_medai.core.models.formats import is_model_package
from napari_medai.core.models.registry import user_model_dir
from napari_medai.core.segmentation.config import SegmentResult
from napari_medai.core.training.config import (
    DIMENSIONALITIES,
    GUI_KEEP_FREE,
    TrainConfig,
    TrainResult,
    training_threads,
)

if TYPE_CHECKING:
    import napari

NEW_MODEL = "New model"
LAST_MODEL = "Last trained model"
MODEL_FOLDER = "Model folder..."
_PATH_ROLE = Qt.ItemDataRole.UserRole
DEFAULT_TIME_BUDGET_S = 60.0


def default_output_dir(now: float | None = None) -> Path:
    """A new folder under the user model folder, named by the date (never by the scan)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = user_model_dir() / f"trained-{stamp}"
    path, number = base, 1
    while path.exists() or path.with_name(path.name + ".checkpoints").exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def _is_annotation(layer: Layer) -> bool:
    return isinstance(layer, Labels) and layer.ndim == 3


class _LayerCombo(QComboBox):
    """The viewer's layers that pass ``accepts``, by name; keeps its pick across refreshes."""

    def __init__(self, accepts: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._accepts = accepts
        self._layers: list[Layer] = []

    def layer(self) -> Layer | None:
        """The picked layer, or None."""
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer: Layer) -> None:
        """Pick ``layer`` (it must be listed)."""
        self.setCurrentIndex(self._layers.index(layer))

    def refresh(self, layers: list[Layer]) -> None:
        """List the accepted layers; a picked layer that is gone leaves no pick behind.

        Never silently swapping the picked labels for others keeps training on
        the layer the user chose; with nothing picked yet, the first one is.
        """
        current = self.layer()
        self._layers = [layer for layer in layers if self._accepts(layer)]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        if current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
        elif current is not None:
            self.setCurrentIndex(-1)
        self.blockSignals(False)


class _PairRow(QWidget):
    """One training pair: an image and the labels painted on it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image_combo = _LayerCombo(is_segmentable)
        self.labels_combo = _LayerCombo(_is_annotation)
        self.image_combo.setToolTip("The scan to train on")
        self.labels_combo.setToolTip(
            "The labels painted on that scan; slices holding a label count as annotated, "
            "every other voxel is ignored"
        )
        self.remove_button = QPushButton("x")
        self.remove_button.setToolTip("Remove this pair")
        self.remove_button.setFixedWidth(28)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image_combo, 1)
        layout.addWidget(self.labels_combo, 1)
        layout.addWidget(self.remove_button)

    def refresh(self, layers: list[Layer]) -> None:
        self.image_combo.refresh(layers)
        self.labels_combo.refresh(layers)

    def pair(self) -> tuple[Image, Labels] | None:
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        return None if image is None or labels is None else (image, labels)


class TrainWidget(QWidget):
    """Train a model on the labels painted so far; predict, correct and train again.

    Train snapshots the picked label layers (training never writes into them),
    runs :func:`train_job` in a worker thread with every core but one, and
    plots loss and validation Dice live. Stop ends training within a second;
    the best model so far is kept. Predict runs that model on the first pair's
    image into the layer "<image> – prediction". "Accept corrections" copies
    every plane (axial, coronal or sagittal) edited in the prediction layer
    since it was predicted into the first pair's labels, whole, so the next
    round learns from it; "Accept shown slice" copies the displayed axial slice
    as predicted. "Next most uncertain slice" walks the axial slices not yet
    painted, most uncertain first (mean per-voxel uncertainty of the prediction).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        self._rows: list[_PairRow] = []
        #: The best model of the last training run, once one is on disk.
        self.last_model: Path | None = None
        #: The result of the last training run that completed its budget.
        self.last_result: TrainResult | None = None
        #: The prediction being reviewed, once Predict has run.
        self.review: Review | None = None

        self._rows_layout = QVBoxLayout()
        self._rows_layout.setContentsMargins(0, 0, 0, 0)
        self.add_pair_button = QPushButton("Add pair")
        self.add_pair_button.setToolTip("Train on several scans at once")
        self.start_combo = QComboBox()
        self.start_combo.addItem(NEW_MODEL, None)
        self.start_combo.addItem(LAST_MODEL, None)
        self.start_combo.addItem(MODEL_FOLDER, None)
        self.start_combo.setToolTip("Start from scratch, or fine-tune a model package")
        self._start_index = 0
        self._set_last_model_item()
        self.dimensionality_combo = QComboBox()
        self.dimensionality_combo.addItems(DIMENSIONALITIES)
        self.dimensionality_combo.setToolTip(
            "auto: 2.5D for a few painted axial slices, 3D for dense labels or other axes"
        )
        self.time_spin = QDoubleSpinBox()
        self.time_spin.setRange(0.0, 24 * 3600.0)
        self.time_spin.setDecimals(0)
        self.time_spin.setSuffix(" s")
        self.time_spin.setSpecialValueText("no limit")
        self.time_spin.setValue(DEFAULT_TIME_BUDGET_S)
        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(0, 10_000_000)
        self.iterations_spin.setSpecialValueText("no limit")
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, os.cpu_count() or 1)
        self.threads_spin.setSpecialValueText("auto")
        self.threads_spin.setToolTip(
            "CPU threads for training; auto: the cores other programs leave free"
            + (f", keeping {GUI_KEEP_FREE} for napari" if GUI_KEEP_FREE else "")
        )
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText(f"new folder in {user_model_dir()}")
        self.output_edit.setToolTip("Folder for the trained model package (must not exist yet)")
        self.browse_button = QPushButton("...")
        self.browse_button.setFixedWidth(28)
        self.train_button = QPushButton("Train")
        self.runner = JobRunner()
        self.stop_button = self.runner.cancel_button
        self.stop_button.setText("Stop")
        self.stop_button.setToolTip("Stop within a second; the best model so far is kept")
        self.plot = LivePlot(
            napari_viewer,
            x_label="iteration",
            y_label="loss",
            right_y_label="validation Dice",
            right_y_range=(0.0, 1.0),
            empty_text="Loss and validation Dice show here while training",
        )
        self.plot.set_series("loss", [], [], label="loss")
        self.plot.set_series(
            "dice", [], [], axis="right", style="line+points", label="validation Dice"
        )
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip(
            "Run the trained model on the first pair's image into '<image> – prediction'"
        )
        self.next_slice_button = QPushButton("Next most uncertain slice")
        self.accept_button = QPushButton("Accept corrections")
        self.accept_button.setToolTip(
            "Copy every slice you edited in the prediction layer into the labels, "
            "so the next training round learns from it"
        )
        self.accept_slice_button = QPushButton("Accept shown slice")
        self.accept_slice_button.setToolTip(
            "Copy the displayed axial slice of the prediction, as it is, into the labels"
        )
        self.status = QLabel("")
        self.status.setWordWrap(True)

        data_box = QGroupBox("Training data (image, labels)")
        data_layout = QVBoxLayout(data_box)
        data_layout.addLayout(self._rows_layout)
        data_layout.addWidget(self.add_pair_button)
        output = QHBoxLayout()
        output.addWidget(self.output_edit, 1)
        output.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Start from", self.start_combo)
        form.addRow("Network", self.dimensionality_combo)
        form.addRow("Time budget", self.time_spin)
        form.addRow("Iterations", self.iterations_spin)
        form.addRow("CPU threads", self.threads_spin)
        form.addRow("Save to", output)
        review = QHBoxLayout()
        review.addWidget(self.accept_button)
        review.addWidget(self.accept_slice_button)
        layout = QVBoxLayout(self)
        layout.addWidget(data_box)
        layout.addLayout(form)
        layout.addWidget(self.train_button)
        layout.addWidget(self.runner)
        layout.addWidget(self.plot)
        layout.addWidget(self.predict_button)
        layout.addWidget(self.next_slice_button)
        layout.addLayout(review)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.add_pair_button.clicked.connect(lambda _checked=False: self.add_pair())
        self.start_combo.currentIndexChanged.connect(self._on_start_chosen)
        self.browse_button.clicked.connect(self._browse_output)
        self.train_button.clicked.connect(self.train)
        self.predict_button.clicked.connect(self.predict)
        self.next_slice_button.clicked.connect(self.next_uncertain_slice)
        self.accept_button.clicked.connect(self.accept_corrections)
        self.accept_slice_button.clicked.connect(self.accept_shown_slice)
        self.runner.runningChanged.connect(self._update_buttons)
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._on_layer_removed)
        layers.events.moved.connect(self._refresh_layers)
        for layer in layers:
            layer.events.name.connect(self._refresh_layers)
        self.add_pair()

    # Training data ------------------------------------------------------------------

    @property
    def pair_rows(self) -> list[_PairRow]:
        """The rows of (image, labels) pickers, first one first."""
        return list(self._rows)

    def add_pair(self, image: Image | None = None, labels: Labels | None = None) -> _PairRow:
        """Add a row of pickers, set to ``image`` and ``labels`` when given."""
        row = _PairRow()
        row.remove_button.clicked.connect(lambda _checked=False: self._remove_pair(row))
        row.image_combo.currentIndexChanged.connect(self._update_buttons)
        row.labels_combo.currentIndexChanged.connect(self._update_buttons)
        row.refresh(list(self._viewer.layers))
        if image is not None:
            row.image_combo.set_layer(image)
        if labels is not None:
            row.labels_combo.set_layer(labels)
        self._rows.append(row)
        self._rows_layout.addWidget(row)
        self._update_buttons()
        return row

    def _remove_pair(self, row: _PairRow) -> None:
        if len(self._rows) == 1:
            return
        self._rows.remove(row)
        self._rows_layout.removeWidget(row)
        row.deleteLater()
        self._update_buttons()

    def selected_pairs(self) -> list[tuple[Image, Labels]]:
        """The complete (image, labels) pairs picked, in row order."""
        return [pair for row in self._rows if (pair := row.pair()) is not None]

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    def _on_layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._refresh_layers)
        review = self.review
        if review is not None and event.value in review.layers:
            self.review = None
        self._refresh_layers()

    def _refresh_layers(self, _event: Any = None) -> None:
        layers = list(self._viewer.layers)
        for row in self._rows:
            row.refresh(layers)
        self._update_buttons()

    # Settings ---------------------------------------------------------------------

    def _set_last_model_item(self) -> None:
        item = self.start_combo.model().item(1)
        item.setData(None if self.last_model is None else str(self.last_model), _PATH_ROLE)
        item.setEnabled(self.last_model is not None)

    def set_start_model(self, path: str | Path | None) -> None:
        """Fine-tune the model package at ``path`` next; None starts a new model."""
        if path is None:
            self.start_combo.setCurrentIndex(0)
            return
        index = self.start_combo.findData(str(path), _PATH_ROLE)
        if index < 0:
            self.start_combo.addItem(f"Folder: {Path(path).name}", str(path))
            index = self.start_combo.count() - 1
        self.start_combo.setCurrentIndex(index)

    def start_model(self) -> Path | None:
        """The model package training starts from, or None for a new model."""
        path = self.start_combo.currentData(_PATH_ROLE)
        return None if path is None else Path(path)

    def _on_start_chosen(self, index: int) -> None:
        if self.start_combo.itemText(index) != MODEL_FOLDER:
            self._start_index = index
            return
        path = QFileDialog.getExistingDirectory(self, "Model package to start from")
        self.start_combo.blockSignals(True)
        self.start_combo.setCurrentIndex(self._start_index)
        self.start_combo.blockSignals(False)
        if path:
            self.set_start_model(path)

    def _browse_output(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(
            self, "New folder for the trained model", str(user_model_dir())
        )
        if path:
            self.output_edit.setText(path)

    def output_dir(self) -> Path:
        """Where the next model goes: the typed folder, else :func:`default_output_dir`."""
        text = self.output_edit.text().strip()
        return Path(text).expanduser() if text else default_output_dir()

    def config(self, out_dir: Path) -> TrainConfig:
        """The settings as the core config (the CLI fills in the same object)."""
        time_budget = self.time_spin.value()
        iterations = self.iterations_spin.value()
        return TrainConfig(
            out_dir=out_dir,
            dimensionality=self.dimensionality_combo.currentText(),
            max_time_s=time_budget or None,
            max_iters=iterations or None,
            init=self.start_model(),
            num_threads=self.threads_spin.value() or training_threads(keep_free=GUI_KEEP_FREE),
        )

    # Training ---------------------------------------------------------------------

    def train(self) -> None:
        """Train on a snapshot of the picked pairs; the plot starts afresh."""
        pairs = self.selected_pairs()
        if not pairs or self.runner.running:
            return
        try:
            data = [training_pair(image, labels) for image, labels in pairs]
        except (MedaiError, ValueError) as error:
            self._fail("Train", error)
            return
        config = self.config(self.output_dir())
        self.plot.clear()
        self.status.setText(f"Training; the model goes to {config.out_dir}")
        self.runner.start(
            partial(train_job, data, config),
            self._trained,
            self._on_progress,
            partial(self._training_finished, Path(config.out_dir)),
            title="Train",
        )

    def stop(self) -> None:
        """Stop the running job at its next step (training keeps its best model)."""
        self.runner.cancel()

    def _on_progress(self, event: Progress) -> None:
        payload = event.payload
        if isinstance(payload, dict) and "loss" in payload:
            iteration = int(payload["iteration"])
            self.plot.append("loss", iteration, float(payload["loss"]))
            if payload.get("val_dice") is not None:
                self.plot.append("dice", iteration, float(payload["val_dice"]))

    def _trained(self, result: TrainResult) -> None:
        self.last_result = result

    def _training_finished(self, out_dir: Path, outcome: JobOutcome) -> None:
        if is_model_package(out_dir):
            self.last_model = out_dir
            self._set_last_model_item()
            card = ModelCard.read(out_dir / CARD_FILE)
            dice = card.training.get("val_dice")
            score = "" if dice is None else f", validation Dice {dice:.3f}"
            ended = "Stopped" if outcome is JobOutcome.CANCELLED else "Trained"
            self.status.setText(f"{ended}: best model '{card.name}'{score}, saved in {out_dir}")
        self._update_buttons()

    # Prediction and review ----------------------------------------------------------

    def predict(self) -> None:
        """Run the last trained model on the first pair's image (uncertainty too)."""
        pair = self._rows[0].pair()
        if pair is None or self.last_model is None or self.runner.running:
            return
        image, annotation = pair
        try:
            volume = segmentation_input(image)
        except MedaiError as error:
            self._fail("Predict", error)
            return
        job = partial(predict_job, self.last_model, volume, annotation.data)
        self.runner.start(job, partial(self._show_prediction, image, annotation), title="Predict")

    def _show_prediction(
        self, image: Image, annotation: Labels, outcome: tuple[SegmentResult, list[int]]
    ) -> None:
        result, ranking = outcome
        layer = show_prediction(self._viewer, image, result.labels)
        self.review = Review(image, annotation, layer, np.array(layer.data, copy=True), ranking)
        most = f" Most uncertain unpainted slice: {ranking[0]}." if ranking else ""
        self.status.setText(
            f"Prediction in '{layer.name}': correct it, then Accept corrections.{most}"
        )
        self._update_buttons()

    def next_uncertain_slice(self) -> int | None:
        """Jump to the next slice in uncertainty order (wrapping round); return its index."""
        review = self.review
        if review is None or not review.ranking:
            return None
        z = review.ranking[review.next_index % len(review.ranking)]
        review.next_index += 1
        go_to_slice(self._viewer, review.image, z)
        self.status.setText(
            f"Slice {z}: number {(review.next_index - 1) % len(review.ranking) + 1} "
            "in order of uncertainty"
        )
        return z

    def accept_corrections(self) -> dict[str, int]:
        """Copy the planes edited in the prediction layer into the annotation layer."""
        if self.review is None:
            return {}
        try:
            counts = self.review.accept_corrections()
        except MedaiError as error:
            self._fail("Accept corrections", error)
            return {}
        planes = ", ".join(f"{n} along {axis}" for axis, n in counts.items() if n)
        self.status.setText(
            f"Copied edited planes ({planes}) into '{self.review.annotation.name}'"
            if planes
            else "No edits in the prediction layer since it was predicted"
        )
        return counts

    def accept_shown_slice(self) -> int | None:
        """Copy the displayed axial slice of the prediction into the annotation layer."""
        review = self.review
        if review is None:
            return None
        z = displayed_slice(self._viewer, review.prediction)
        try:
            review.accept_slice(z)
        except MedaiError as error:
            self._fail("Accept slice", error)
            return None
        self.status.setText(f"Copied slice {z} into '{review.annotation.name}'")
        return z

    # Helpers ----------------------------------------------------------------------

    def _fail(self, title: str, error: Exception) -> None:
        self.status.setText(f"{title} failed: {error}")
        show_error(f"{title} failed: {error}")

    def _update_buttons(self, _value: Any = None) -> None:
        idle = not self.runner.running
        pairs = [row.pair() for row in self._rows]
        self.train_button.setEnabled(idle and bool(pairs) and None not in pairs)
        self.predict_button.setEnabled(
            idle and self.last_model is not None and bool(pairs) and pairs[0] is not None
        )
        review = self.review
        self.next_slice_button.setEnabled(review is not None and bool(review.ranking))
        self.accept_button.setEnabled(idle and review is not None)
        self.accept_slice_button.setEnabled(idle and review is not None)

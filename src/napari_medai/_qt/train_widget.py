"""Dock widget "Train": paint a few slices, train, predict, correct, repeat.

Thin by design: a magicgui form whose fields become a :class:`TrainConfig`;
:func:`train_job` runs in the :class:`JobRunner` (progress, Stop, errors as
notifications), the live plot shows loss and validation Dice, and the napari
side (:mod:`napari_medai._napari.training`) names the model, judges it,
turns predictions into layers and copies accepted corrections back into the
annotation layer.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog, QLabel

from napari_medai._napari.details import model_rows, result_rows
from napari_medai._napari.generation import augmentation_for
from napari_medai._napari.segmentation import segmentation_input
from napari_medai._napari.training import (
    Review,
    default_output_dir,
    displayed_slice,
    finish_training,
    go_to_slice,
    parse_label_names,
    predict_job,
    show_prediction,
    train_job,
    training_pair,
)
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.pair_row import PairRow
from napari_medai._qt.parts import DetailsView
from napari_medai._qt.plot import LivePlot
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Progress
from napari_medai.core.models.formats import is_model_package
from napari_medai.core.models.registry import drafts_dir, keep_model, user_model_dir
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
DEFAULT_TIME_BUDGET_S = 60.0


class TrainWidget(Container):
    """Train a model on the labels painted so far; predict, correct and train again.

    Train snapshots the picked label layers (training never writes into them),
    runs :func:`train_job` in a worker thread with every core but one, and
    plots loss and validation Dice live. Stop ends training within a second;
    the best model so far is kept. A model that validates well joins the
    model list under its name; one that does not is reported plainly and
    joins only if the user clicks Keep. Predict runs the last model on the
    first pair's image into "<image> – prediction"; "Accept corrections"
    copies every plane edited there into the first pair's labels, "Accept
    shown slice" the displayed axial slice as predicted, and "Next most
    uncertain slice" walks the unpainted axial slices, most uncertain first.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._rows: list[PairRow] = []
        self._start_paths: dict[str, Path] = {}
        #: The last model trained (listed, or a draft waiting for Keep), once on disk.
        self.last_model: Path | None = None
        #: The result of the last training run that completed its budget.
        self.last_result: TrainResult | None = None
        #: The prediction being reviewed, once Predict has run.
        self.review: Review | None = None

        self._pairs = Container(labels=False, label="Pairs")
        self.add_pair_button = PushButton(text="Add pair", tooltip="Train on several scans")
        self._pairs.tooltip = "Each row: a scan and the labels painted on it"
        self.name_edit = LineEdit(label="Model name", tooltip="How the model is listed")
        self.name_edit.native.setPlaceholderText("e.g. liver (default: the label names)")
        self.label_names_edit = LineEdit(label="Label names")
        self.label_names_edit.native.setPlaceholderText("e.g. liver  or  1: liver, 2: spleen")
        self.start_combo = ComboBox(label="Start from", choices=self._start_choices)
        self.start_combo.tooltip = "Start from scratch, or fine-tune a model package"
        self.dimensionality_combo = ComboBox(label="Network", choices=DIMENSIONALITIES)
        self.dimensionality_combo.tooltip = (
            "auto: 2.5D for a few painted axial slices, 3D for dense labels or other axes"
        )
        self.time_spin = FloatSpinBox(label="Time budget", max=24 * 3600.0, step=10.0)
        self.time_spin.value = DEFAULT_TIME_BUDGET_S
        self.iterations_spin = SpinBox(label="Iterations", max=10_000_000)
        self._auto_threads = 1
        self.threads_combo = ComboBox(label="CPU threads", choices=self._thread_choices)
        self.threads_combo.tooltip = (
            "CPU threads for training; auto (N): the N cores other programs leave free now"
            + (f", keeping {GUI_KEEP_FREE} for napari" if GUI_KEEP_FREE else "")
        )
        self.output_edit = LineEdit(label="Save to")
        self.output_edit.native.setPlaceholderText("the model list (default)")
        self.output_edit.tooltip = "Folder for the model package instead (must not exist yet)"
        self.browse_button = PushButton(text="Choose folder...")
        self.train_button = PushButton(text="Train")
        self.extend(
            [self._pairs, self.add_pair_button, self.name_edit, self.label_names_edit]
            + [self.start_combo, self.dimensionality_combo, self.time_spin, self.iterations_spin]
            + [self.threads_combo]
            + [self.output_edit, self.browse_button, self.train_button]
        )
        self.time_spin.native.setSuffix(" s")
        for spin in (self.time_spin, self.iterations_spin):
            spin.tooltip = "0: no limit"
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
        self.keep_button = PushButton(text="Keep this model anyway")
        self.keep_button.tooltip = "Add the model to the model list although it is not ready"
        self.predict_button = PushButton(text="Predict")
        self.predict_button.tooltip = "Run the last model on the first pair's image"
        self.next_slice_button = PushButton(text="Next most uncertain slice")
        self.accept_button = PushButton(text="Accept corrections")
        self.accept_button.tooltip = "Copy every slice you edited in the prediction into the labels"
        self.accept_slice_button = PushButton(text="Accept shown slice")
        self.accept_slice_button.tooltip = "Copy the displayed axial slice of the prediction as is"
        review = Container(
            widgets=[self.accept_button, self.accept_slice_button], layout="horizontal"
        )
        review.margins = (0, 0, 0, 0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.details = DetailsView()
        layout = self.native.layout()
        layout.addWidget(self.runner)
        layout.addWidget(self.plot)
        for widget in (self.keep_button, self.predict_button, self.next_slice_button, review):
            layout.addWidget(widget.native)
        for widget in (self.status, self.details):
            layout.addWidget(widget)
        layout.addStretch(1)

        self.add_pair_button.changed.connect(lambda _value=None: self.add_pair())
        self.start_combo.changed.connect(self._on_start_chosen)
        self.browse_button.changed.connect(self._browse_output)
        self.train_button.changed.connect(self.train)
        self.keep_button.changed.connect(self.keep)
        self.predict_button.changed.connect(self.predict)
        self.next_slice_button.changed.connect(self.next_uncertain_slice)
        self.accept_button.changed.connect(self.accept_corrections)
        self.accept_slice_button.changed.connect(self.accept_shown_slice)
        self.runner.runningChanged.connect(self._update_buttons)
        self.runner.runningChanged.connect(self.auto_threads)
        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.reordered, layers.events.renamed):
            event.connect(self.reset_choices)
        layers.events.removed.connect(self._on_layer_removed)
        layers.selection.events.active.connect(self._update_details)
        self.keep_button.visible = False
        self.add_pair()

    # Training data ------------------------------------------------------------------

    @property
    def pair_rows(self) -> list[PairRow]:
        """The rows of (image, labels) pickers, first one first."""
        return list(self._rows)

    def add_pair(self, image: Image | None = None, labels: Labels | None = None) -> PairRow:
        """Add a row of pickers, set to ``image`` and ``labels`` when given."""
        row = PairRow(self._viewer)
        row.remove_button.changed.connect(lambda _value=None: self._remove_pair(row))
        row.changed.connect(self._update_buttons)
        if image is not None:
            row.image_combo.value = image
        if labels is not None:
            row.labels_combo.value = labels
        self._rows.append(row)
        self._pairs.append(row)
        self._update_buttons()
        return row

    def _remove_pair(self, row: PairRow) -> None:
        if len(self._rows) > 1:
            self._rows.remove(row)
            self._pairs.remove(row)
            self._update_buttons()

    def selected_pairs(self) -> list[tuple[Image, Labels]]:
        """The complete (image, labels) pairs picked, in row order."""
        return [pair for row in self._rows if (pair := row.pair()) is not None]

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers into every picker (napari calls this on layer changes)."""
        super().reset_choices()
        self._update_buttons()

    def _on_layer_removed(self, event: Any) -> None:
        if self.review is not None and event.value in self.review.layers:
            self.review = None
        self.reset_choices()

    # Settings ---------------------------------------------------------------------

    def _start_choices(self, _widget: Any = None) -> list[str]:
        return [NEW_MODEL, LAST_MODEL, *self._start_paths, MODEL_FOLDER]

    def set_start_model(self, path: str | Path | None) -> None:
        """Fine-tune the model package at ``path`` next; None starts a new model."""
        if path is None:
            self.start_combo.value = NEW_MODEL
            return
        self._start_paths[f"Folder: {Path(path).name}"] = Path(path)
        self.start_combo.reset_choices()
        with self.start_combo.changed.blocked():
            self.start_combo.value = f"Folder: {Path(path).name}"

    def start_model(self) -> Path | None:
        """The model package training starts from, or None for a new model."""
        if self.start_combo.value == LAST_MODEL:
            return self.last_model
        return self._start_paths.get(self.start_combo.value)

    def _on_start_chosen(self, value: str) -> None:
        if value != MODEL_FOLDER:
            self._update_buttons()
            return
        path = QFileDialog.getExistingDirectory(self.native, "Model package to start from")
        with self.start_combo.changed.blocked():
            self.start_combo.value = NEW_MODEL
        if path:
            self.set_start_model(path)

    def _browse_output(self, _value: Any = None) -> None:
        path, _filter = QFileDialog.getSaveFileName(
            self.native, "New folder for the trained model", str(user_model_dir())
        )
        if path:
            self.output_edit.value = path

    def output_dir(self) -> Path:
        """Where the next model goes: the typed folder, else a new draft folder."""
        text = self.output_edit.value.strip()
        return Path(text).expanduser() if text else default_output_dir(self.name_edit.value)

    def config(self, out_dir: Path) -> TrainConfig:
        """The settings as the core config (the CLI fills in the same object)."""
        return TrainConfig(
            out_dir=out_dir,
            dimensionality=self.dimensionality_combo.value,
            max_time_s=self.time_spin.value or None,
            max_iters=self.iterations_spin.value or None,
            init=self.start_model(),
            num_threads=self.threads_combo.value or self.auto_threads(),
            name=self.name_edit.value.strip() or None,
            augmentation=augmentation_for(self._viewer),
        )

    def _thread_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        """ "auto (N)" (value 0: the N cores free now, re-read on each call), then 1, 2, ..."""
        self._auto_threads = training_threads(keep_free=GUI_KEEP_FREE)
        cores = range(1, (os.cpu_count() or 1) + 1)
        return [(f"auto ({self._auto_threads})", 0)] + [(str(n), n) for n in cores]

    def auto_threads(self, _value: Any = None) -> int:
        """The threads "auto" means now (free cores vary with load); its entry says so."""
        self.threads_combo.reset_choices()
        return self._auto_threads

    # Training ---------------------------------------------------------------------

    def train(self, _value: Any = None) -> None:
        """Train on a snapshot of the picked pairs; the plot and status start afresh."""
        pairs = self.selected_pairs()
        if not pairs or self.runner.running:
            return
        try:
            names = parse_label_names(self.label_names_edit.value)
            data = [training_pair(image, labels, names) for image, labels in pairs]
        except (MedaiError, ValueError) as error:
            self._fail("Train", error)
            return
        config = self.config(self.output_dir())
        self.plot.clear()
        self.keep_button.visible = False
        self.status.setText("Training…")
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
        self.status.setText("")  # a failure is told by the runner's line
        if outcome is not JobOutcome.FAILED and is_model_package(out_dir):
            report = finish_training(out_dir, stopped=outcome is JobOutcome.CANCELLED)
            self.last_model = report.model
            self.status.setText(report.message)
            self.keep_button.visible = not report.listed and out_dir.parent == drafts_dir()
            self.details.show_rows(model_rows(report.card))
        self._update_buttons()

    def keep(self, _value: Any = None) -> Path | None:
        """Add the last model, not ready but wanted, to the model list."""
        if self.last_model is None:
            return None
        self.last_model = keep_model(self.last_model)
        self.keep_button.visible = False
        self.status.setText(f"Kept: the model is in the model list as '{self.last_model.name}'")
        return self.last_model

    # Prediction and review ----------------------------------------------------------

    def predict(self, _value: Any = None) -> None:
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
        self.status.setText("")
        job = partial(predict_job, self.last_model, volume, annotation.data)
        show = partial(self._show_prediction, image, annotation)
        self.runner.start(job, show, on_finished=self._update_buttons, title="Predict")

    def _show_prediction(
        self, image: Image, annotation: Labels, outcome: tuple[SegmentResult, list[int]]
    ) -> None:
        result, ranking = outcome
        provenance = {**result.provenance, "image": image.name}
        layer = show_prediction(self._viewer, image, replace(result.labels, metadata=provenance))
        self.review = Review(image, annotation, layer, np.array(layer.data, copy=True), ranking)
        most = f" Most uncertain unpainted slice: {ranking[0]}." if ranking else ""
        self.status.setText(
            f"Prediction in '{layer.name}': correct it, then Accept corrections.{most}"
        )
        self._update_details()

    def next_uncertain_slice(self, _value: Any = None) -> int | None:
        """Jump to the next slice in uncertainty order (wrapping round); return its index."""
        review = self.review
        if review is None or not review.ranking:
            return None
        z = review.ranking[review.next_index % len(review.ranking)]
        review.next_index += 1
        go_to_slice(self._viewer, review.image, z)
        rank = (review.next_index - 1) % len(review.ranking) + 1
        self.status.setText(f"Slice {z}: number {rank} in order of uncertainty")
        return z

    def accept_corrections(self, _value: Any = None) -> dict[str, int]:
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

    def accept_shown_slice(self, _value: Any = None) -> int | None:
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

    def _update_details(self, _event: Any = None) -> None:
        review = self.review
        if review is not None and review.prediction in self._viewer.layers:
            self.details.show_rows(result_rows(review.prediction))

    def _update_buttons(self, _value: Any = None) -> None:
        idle = not self.runner.running
        pairs = [row.pair() for row in self._rows]
        complete = bool(pairs) and None not in pairs
        self.train_button.enabled = idle and complete
        self.train_button.tooltip = (
            "Train on the picked pairs"
            if complete
            else "Pick an image and the labels painted on it in every row (open a scan, "
            "add a Labels layer and paint a few slices)"
        )
        can_predict = self.last_model is not None and pairs[0] is not None
        self.predict_button.enabled = idle and can_predict
        self.predict_button.tooltip = (
            "Run the last model on the first pair's image"
            if can_predict
            else "Train a model first, and pick the image in the first row"
        )
        review = self.review
        self.next_slice_button.enabled = review is not None and bool(review.ranking)
        self.accept_button.enabled = idle and review is not None
        self.accept_slice_button.enabled = idle and review is not None
        self.keep_button.enabled = idle

"""Dock widget "Train": paint a few slices, train, predict, correct, repeat.

Thin by design: the :class:`TrainForm`'s fields become a :class:`TrainConfig`;
pairs that cannot train are refused at once, before any worker starts;
:func:`train_job` runs in the worker process through the :class:`JobRunner`
(progress, Stop, errors as notifications), the live plot shows loss and Dice
(named a validation only when painted slices were held out), a model to
fine-tune that is made for another modality than the scans is warned about
as the Segment dock warns, and the napari
side (:mod:`napari_medai._napari.training`) names the model, judges it,
turns predictions into layers and copies accepted corrections back into the
annotation layer.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import PushButton
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QLabel

from napari_medai._napari.details import model_rows
from napari_medai._napari.modality import layer_modality
from napari_medai._napari.training import (
    Review,
    finish_training,
    parse_label_names,
    train_job,
    training_pair,
)
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.parts import DetailsView, scroll_column
from napari_medai._qt.plot import LivePlot
from napari_medai._qt.review_panel import ReviewPanel
from napari_medai._qt.train_form import TrainForm
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Progress
from napari_medai.core.models.card import CARD_FILE, ModelCard, package_file
from napari_medai.core.models.fit import modality_mismatch
from napari_medai.core.models.formats import is_model_package
from napari_medai.core.models.registry import drafts_dir, keep_model
from napari_medai.core.training.config import TrainResult, check_training_pairs
from napari_medai.core.training.quality import dice_name

if TYPE_CHECKING:
    import napari

#: The live plot's height: its axes and a two-row legend, bounded so it never grows the dock.
PLOT_HEIGHT_PX = 180


class TrainWidget(TrainForm):
    """Train a model on the labels painted so far; predict, correct and train again.

    Train snapshots the picked label layers (training never writes into them),
    runs :func:`train_job` in the worker process on the free cores (below napari's priority),
    and plots loss and Dice live. Stop ends training within a second;
    the best model so far is kept. A model that validates well joins the
    model list under its name; one that does not is reported plainly and
    joins only if the user clicks Keep. Predict runs the last model on the
    first pair's image, for review and correction in the :class:`ReviewPanel`.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        #: The result of the last training run that completed its budget.
        self.last_result: TrainResult | None = None
        self.runner = JobRunner()
        self.stop_button = self.runner.cancel_button
        self.stop_button.setText("Stop")
        self.stop_button.setToolTip("Stop within a second; the best model so far is kept")
        self.plot = LivePlot(
            napari_viewer,
            x_label="iteration",
            y_label="loss",
            right_y_label="Dice",
            right_y_range=(0.0, 1.0),
            empty_text="Loss and Dice show here while training",
        )
        self.plot.setFixedHeight(PLOT_HEIGHT_PX)
        self._clear_plot()
        self.keep_button = PushButton(text="Keep this model anyway")
        self.keep_button.tooltip = "Add the model to the model list although it is not ready"
        self.fit_warning = QLabel("")
        self.fit_warning.setStyleSheet("color: #f0a030")  # as the Segment dock's
        self.fit_warning.setWordWrap(True)
        self.fit_warning.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.details = DetailsView()
        self.reviewer = ReviewPanel(
            napari_viewer, self.runner, self.status, self.details, self._fail, self._update_buttons
        )
        self.predict_button = self.reviewer.predict_button
        self.next_slice_button = self.reviewer.next_slice_button
        self.accept_button = self.reviewer.accept_button
        self._layout_dock()

        self.train_button.changed.connect(self.train)
        self.keep_button.changed.connect(self.keep)
        self.predict_button.changed.connect(self.predict)
        self.runner.runningChanged.connect(self._update_buttons)
        self.runner.runningChanged.connect(self.auto_threads)
        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.reordered, layers.events.renamed):
            event.connect(self.reset_choices)
        layers.events.removed.connect(self._on_layer_removed)
        layers.selection.events.active.connect(self.reviewer.update_details)
        self.keep_button.visible = False
        self.add_pair()

    def _layout_dock(self) -> None:
        """The form, plot, review and Details scroll inside the dock; progress and status
        stay in view below, so the dock fits a small screen and a result never grows it."""
        results = (self.plot, self.keep_button.native, self.reviewer.native, self.details)
        scroll_column(
            self, self.form, self.fit_warning, *results, pinned=(self.runner, self.status)
        )

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers into every picker (napari calls this on layer changes)."""
        super().reset_choices()
        self._update_buttons()

    def _on_layer_removed(self, event: Any) -> None:
        self.reviewer.forget(event.value)
        self.reset_choices()

    # Training ---------------------------------------------------------------------

    def train(self, _value: Any = None) -> None:
        """Train on a snapshot of the picked pairs; the plot and status start afresh."""
        pairs = self.selected_pairs()
        if not pairs or self.runner.running:
            return
        try:
            names = parse_label_names(self.label_names_edit.value)
            data = [training_pair(image, labels, names) for image, labels in pairs]
            check_training_pairs(data)
        except (MedaiError, ValueError) as error:
            self._fail("Train", error)
            return
        problem = self.fit_problem()
        if problem is not None:
            show_warning(f"Train: {problem}")
        config = self.config(self.output_dir())
        self._clear_plot()
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

    def _clear_plot(self) -> None:
        """Empty curves; the Dice gets its name once the first one says what it measured."""
        self.plot.set_series("loss", [], [], label="loss")
        self.plot.set_series("dice", [], [], axis="right", style="line+points", label="")

    def _on_progress(self, event: Progress) -> None:
        payload = event.payload
        if isinstance(payload, dict) and "loss" in payload:
            iteration = int(payload["iteration"])
            self.plot.append("loss", iteration, float(payload["loss"]))
            if payload.get("val_dice") is not None:
                self._plot_dice(iteration, float(payload["val_dice"]), payload["val_held_out"])

    def _plot_dice(self, iteration: int, dice: float, held_out: bool) -> None:
        """Add a Dice point, its legend naming what it was measured on."""
        xs, ys = zip(*self.plot.series("dice"), (iteration, dice))
        self.plot.set_series(
            "dice", xs, ys, axis="right", style="line+points", label=dice_name(held_out)
        )

    def _trained(self, result: TrainResult) -> None:
        """Keep the result; the plot gets the last Dice too (measured after the last step)."""
        self.last_result = result
        points = [(h["iteration"], h["val_dice"]) for h in result.history if "val_dice" in h]
        if points:
            xs, ys = zip(*points)
            self.plot.set_series(
                "dice", xs, ys, axis="right", style="line+points", label=result.quality.dice_name
            )

    def _training_finished(self, out_dir: Path, outcome: JobOutcome) -> None:
        self.status.setText("")  # a failure is told by the runner's line
        if outcome is not JobOutcome.FAILED and is_model_package(out_dir):
            report = finish_training(out_dir, stopped=outcome is JobOutcome.CANCELLED)
            self.last_model = report.model
            self.reset_start_choices()  # offers it, and lists it once it is kept
            self.status.setText(report.message)
            self.keep_button.visible = not report.listed and out_dir.parent == drafts_dir()
            self.details.show_rows(model_rows(report.card))
        self._update_buttons()

    def keep(self, _value: Any = None) -> Path | None:
        """Add the last model, not ready but wanted, to the model list."""
        if self.last_model is None:
            return None
        self.last_model = keep_model(self.last_model)
        self.reset_start_choices()
        self.keep_button.visible = False
        self.status.setText(f"Kept: the model is in the model list as '{self.last_model.name}'")
        return self.last_model

    # Prediction and review ----------------------------------------------------------

    @property
    def review(self) -> Review | None:
        """The prediction being reviewed, once Predict has run."""
        return self.reviewer.review

    @review.setter
    def review(self, review: Review | None) -> None:
        self.reviewer.review = review

    def predict(self, _value: Any = None) -> None:
        """Run the last trained model on the first pair's image (uncertainty too)."""
        pair = self._rows[0].pair()
        if pair is None or self.last_model is None or self.runner.running:
            return
        self.reviewer.predict(self.last_model, *pair)

    def accept_shown_slice(self, _value: Any = None) -> int | None:
        """Copy the displayed axial slice of the prediction into the annotation layer."""
        return self.reviewer.accept_shown_slice()

    # Helpers ----------------------------------------------------------------------

    def fit_problem(self) -> str | None:
        """Why the model to fine-tune may not suit a picked scan (another modality), or None.

        The card is read without loading the model; one that cannot be read is
        left to the training job, which refuses it in words.
        """
        start = self.start_model()
        if start is None:
            return None
        try:
            card = ModelCard.read(package_file(start, CARD_FILE))
        except (MedaiError, OSError):
            return None
        problems = (
            modality_mismatch(card, card.name or start.name, layer_modality(image))
            for image, _labels in self.selected_pairs()
        )
        return next((problem for problem in problems if problem), None)

    def _update_fit_warning(self) -> None:
        problem = self.fit_problem()
        self.fit_warning.setText(f"Warning: {problem}" if problem else "")
        self.fit_warning.setVisible(bool(problem))

    def _fail(self, title: str, error: Exception) -> None:
        """A refusal in the dock (before any job starts): said in the status line, with
        the progress line emptied so no earlier "done" stays in view."""
        self.runner.clear()
        self.status.setText(f"{title} failed: {error}")
        show_error(f"{title} failed: {error}")

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
        self.reviewer.update_buttons(idle, self.last_model is not None and pairs[0] is not None)
        self.keep_button.enabled = idle
        self._update_fit_warning()

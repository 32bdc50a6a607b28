"""Dock widget "Segment": run a model on an image layer, result as layers on its grid.

Thin by design: a magicgui form whose fields become a :class:`SegmentConfig`;
the catalogue's ``SEGMENT`` job runs in the worker process (torch loads there,
not in napari, and a model that crashes takes only the worker down) through
the :class:`JobRunner` (progress, Cancel, errors as notifications), and
:func:`show_segmentation` adds or updates the layers. The model picker lists
segmentation models only, offers first one made for the image's modality and
warns, before running, about a model made for another one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, create_widget
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QLabel

from napari_medai._napari.details import is_result_layer, label_volumes_ml, result_rows
from napari_medai._napari.modality import layer_modality
from napari_medai._napari.segmentation import (
    SegmentationTarget,
    is_segmentable,
    result_layer_data,
    segmentation_input,
    show_outlines,
    show_segmentation,
)
from napari_medai._qt.job_runner import JobOutcome, JobRunner
from napari_medai._qt.layer_pickers import follow_layer_list
from napari_medai._qt.model_picker import ModelPicker
from napari_medai._qt.parts import DetailsView, narrow, scroll_column
from napari_medai.core import catalogue
from napari_medai.core.errors import MedaiError
from napari_medai.core.models.card import SEGMENTATION_TASKS
from napari_medai.core.models.fit import describe_modality, modality_mismatch
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult

if TYPE_CHECKING:
    import napari

DEVICES = ("auto", "cpu", "cuda", "mps")
NO_IMAGE = "Open a 3D scan to segment (File > Open, or a sample)."
NO_MODEL = "Pick a model, or load one from a file or folder."


class SegmentWidget(Container):
    """Pick an image layer and a model, Run; the mask appears on the image's grid.

    Running again with the same image and model replaces the earlier result's
    data, unless "New layer each run" is ticked. The models on offer, and the
    one picked until the user picks, are the :class:`ModelPicker`'s.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = napari_viewer
        #: The layers the last finished run showed (labels first).
        self.output_layers: list[Any] = []

        self.image_combo = create_widget(
            annotation=Image, label="Image", options={"choices": self._image_choices}
        )
        self.models = ModelPicker(
            self.native, self._image_modality, self._update_state, tasks=SEGMENTATION_TASKS
        )
        self.model_combo, self.delete_button = self.models.combo, self.models.delete_button
        self.trust_check = CheckBox(text="Trust this MONAI bundle")
        self.trust_check.tooltip = (
            "MONAI bundle configs can run any Python code. Tick only for bundles from "
            "authors you trust; untrusted bundles are refused."
        )
        self.device_combo = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.device_combo.tooltip = "auto: CUDA GPU, then Apple GPU, then the CPU"
        self.tta_check = CheckBox(text="Test-time augmentation")
        self.tta_check.tooltip = "Average the model's output over flipped copies of the scan"
        self.probability_check = CheckBox(text="Also show the probability map")
        self.uncertainty_check = CheckBox(text="Also show the uncertainty map")
        self.outline_check = CheckBox(text="Show labels as outlines")
        self.outline_check.tooltip = "Outlines leave the scan visible under the prediction"
        self.new_layer_check = CheckBox(text="New layer each run")
        self.new_layer_check.tooltip = "Otherwise a run updates the layers of the previous run"
        self.run_button = PushButton(text="Run")
        self.form = Container(labels=True, scrollable=True)
        self.form.extend(
            [self.image_combo, self.model_combo, self.delete_button]
            + [self.trust_check]
            + [self.device_combo, self.tta_check, self.probability_check, self.uncertainty_check]
            + [self.outline_check, self.new_layer_check, self.run_button]
        )
        for combo in (self.image_combo, self.model_combo, self.device_combo):
            narrow(combo.native)
        # Plain labels under Run: they wrap cleanly, unlike a labelled magicgui row.
        self.fit_warning = QLabel("")
        self.fit_warning.setStyleSheet("color: #f0a030")
        self.reason = QLabel("")
        self.runner = JobRunner()
        self.status = QLabel("")
        for label in (self.fit_warning, self.reason, self.status):
            label.setWordWrap(True)
        self.details = DetailsView()
        self._layout_dock()

        self.image_combo.changed.connect(self._on_image_chosen)
        self.outline_check.changed.connect(self._show_outlines)
        self.run_button.changed.connect(self.run)
        self.runner.runningChanged.connect(self._update_state)
        layers = napari_viewer.layers
        follow_layer_list(layers, self.reset_choices)
        layers.events.renamed.connect(self.reset_choices)
        layers.selection.events.active.connect(self._update_details)
        self.refresh_models()
        self._on_image_chosen()

    def _layout_dock(self) -> None:
        """The form, its notes and Details scroll inside the dock; progress and status stay
        in view below it, so the dock fits a small screen and a result never grows it."""
        notes = (self.fit_warning, self.reason, self.details)
        scroll_column(self, self.form, *notes, pinned=(self.runner, self.status))

    # Pickers ----------------------------------------------------------------------

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if is_segmentable(layer)]

    def current_image(self) -> Image | None:
        """The image layer picked for segmentation, or None."""
        return self.image_combo.value

    def current_model_source(self) -> str | None:
        """The registry name or path of the picked model, or None."""
        return self.models.source

    def _image_modality(self) -> str:
        image = self.current_image()
        return layer_modality(image) if image is not None else ""

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers (napari calls this on layer changes); the model list is
        re-read when opened, so a layer change reads no card."""
        picked = self.image_combo.value
        with self.image_combo.changed.blocked():
            self.image_combo.reset_choices()
            if picked is not None and picked in self.image_combo.choices:
                self.image_combo.value = picked  # a renamed layer stays picked
        self._on_image_chosen()

    def refresh_models(self) -> None:
        """Re-read the model list; keep the pick, or pick the best fit until the user picks."""
        self.models.refresh()

    def add_model_source(self, path: str | Path) -> None:
        """Offer the model at ``path`` (file or folder) in the picker and pick it."""
        self.models.add_source(path)

    def _on_image_chosen(self, _value: Any = None) -> None:
        self.models.follow_scan()
        self._update_state()

    # State ------------------------------------------------------------------------

    def fit_problem(self) -> str | None:
        """Why the picked model may not suit the picked image, or None."""
        image, entry = self.current_image(), self.models.entry()
        if image is None or entry is None:
            return None
        return modality_mismatch(entry, entry.title or entry.name, layer_modality(image))

    def disabled_reason(self) -> str:
        """Why Run is disabled, in words ("" when it is not)."""
        if self.runner.running:
            return "Running; Cancel stops it."
        if self.current_image() is None:
            return NO_IMAGE
        if self.models.source is None:
            modality = self._image_modality()
            if self.models.automatic and modality:
                return (
                    f"No listed model is made for {describe_modality(modality)}: pick one "
                    "anyway, load one, or train one in the Train dock."
                )
            return NO_MODEL
        return self.models.task_problem() or ""

    def _update_state(self, _value: Any = None) -> None:
        reason = self.disabled_reason()
        self.run_button.enabled = not reason
        self.run_button.tooltip = reason or "Segment the picked image with the picked model"
        self.reason.setText("" if self.runner.running else reason)
        problem = self.fit_problem()
        self.fit_warning.setText(f"Warning: {problem}" if problem else "")
        self.fit_warning.setVisible(bool(problem))
        self.models.update(self.runner.running)

    def delete_model(self, _value: Any = None) -> bool:
        """Delete the picked model of the user's folder, once the user confirms."""
        return self.models.delete()

    def config(self) -> SegmentConfig:
        """The settings of the widget as the core config (the CLI fills the same)."""
        return SegmentConfig(
            device=self.device_combo.value,
            tta=self.tta_check.value,
            probabilities=self.probability_check.value,
            uncertainty=self.uncertainty_check.value,
        )

    # Running ----------------------------------------------------------------------

    def run(self, _value: Any = None) -> None:
        """Start segmenting the picked image with the picked model (warn first on a misfit)."""
        image, source = self.current_image(), self.models.source
        if image is None or source is None or self.runner.running:
            return
        self.status.setText("")
        try:
            volume = segmentation_input(image)
        except MedaiError as error:
            self.status.setText(f"Segment failed: {error}")
            show_error(f"Segment failed: {error}")
            return
        problem = self.fit_problem()
        if problem is not None:
            show_warning(f"Segment: {problem}")
        # A model known only after loading (a file) is checked in the job.
        check = "" if self.models.is_listed(source) else layer_modality(image)
        job = partial(
            catalogue.SEGMENT,
            source,
            self.trust_check.value,
            volume,
            self.config(),
            check,
        )
        target = SegmentationTarget.of(image, source)
        show = partial(self._show, target, self.new_layer_check.value, self.outline_check.value)
        self.runner.start(job, show, on_finished=self._finished, title="Segment")

    def _show(
        self,
        target: SegmentationTarget,
        new_layer: bool,
        outlines: bool,
        outcome: tuple[str, SegmentResult],
    ) -> None:
        model_name, result = outcome
        layer_data = result_layer_data(result, target, model_name)
        self.output_layers = show_segmentation(self._viewer, layer_data, new_layer)
        if outlines:
            show_outlines(self.output_layers, True)
        labels = self.output_layers[0]
        volumes = ", ".join(f"{name} {ml:.1f} mL" for name, ml in label_volumes_ml(labels).items())
        self.status.setText(f"'{labels.name}': {volumes or 'no label found'}")
        self._update_details()

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome is not JobOutcome.DONE:
            self.status.setText("")  # the runner's line says what happened
        self._update_state()

    def _show_outlines(self, outlines: bool) -> None:
        show_outlines(self.output_layers, outlines)

    def _update_details(self, _event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        layer = active if is_result_layer(active) else None
        if layer is None and self.output_layers and self.output_layers[0] in self._viewer.layers:
            layer = self.output_layers[0]
        self.details.show_rows(result_rows(layer) if layer is not None else [])

"""Dock widget "Classify": a scan, its slices or boxes through a classifier, with Grad-CAM.

Thin by design: a magicgui form (its layer pickers follow the layer list by
themselves) becomes a :class:`ClassifyConfig`; Run, Train and Evaluate start
catalogue jobs (``core.classification.jobs``), which load the model, torch and
MONAI in the worker process, never in napari's; quick refusals come first. The
result fills a table, the box layer's features and text, a per-slice curve
(click it to go to that slice) and the Grad-CAM layer. Nothing is touched
unless a run completes. "Train" learns from the boxes' classes or a Labels
layer's slices but the "Held-out slices", plots loss and held-out AUC live,
and shows the held-out figures (``classify_results``); "Evaluate" scores the
Model on the held-out slices' examples (``classify_evaluate``). The form
scrolls inside the dock; the status line and progress stay below it.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QSizePolicy

from napari_medai._napari.classification import (
    annotate_layer,
    cam_layer_data,
    class_labels,
    label_values,
    named_label_map,
    regions_from_points,
    regions_from_shapes,
    result_table,
)
from napari_medai._napari.layers import volume_from_layer
from napari_medai._napari.modality import layer_modality
from napari_medai._qt.classify_evaluate import Evaluation
from napari_medai._qt.classify_results import (
    MetricsView,
    new_result_table,
    plot_training,
    show_results,
    slice_curve,
    trained_text,
    training_plot,
)
from napari_medai._qt.job_runner import JobRunner
from napari_medai._qt.model_picker import _LOAD_ACTIONS, ModelPicker
from napari_medai._qt.parts import fit_width, narrow
from napari_medai.core import catalogue
from napari_medai.core.classification.config import (
    TASK,
    ClassifierTrainConfig,
    ClassifyConfig,
    ClassifyResult,
)
from napari_medai.core.classification.heldout import (
    parse_slices,
    slices_text,
    training_boxes,
    training_slices,
)
from napari_medai.core.errors import MedaiError
from napari_medai.core.models.card import CARD_FILE, ModelCard, package_file
from napari_medai.core.models.fit import modality_mismatch
from napari_medai.core.models.formats import is_bundle_folder, is_model_package
from napari_medai.core.models.registry import ModelEntry, list_models, picker_items, user_model_dir

if TYPE_CHECKING:
    import napari

CURVE = "per-slice probability"
SCOPES = {"whole volume": "volume", "every slice": "slices", "boxes": "regions"}
DEVICES = ("auto", "cpu", "cuda", "mps")
SOURCES = ("boxes (Shapes/Points with a class feature)", "slices labelled by a Labels layer")
OPTIONAL = {"nullable": True}
PREDICTED = "predicted class"
VALUES_TIP = (
    "a slice is class k when it holds label k ('5', '1, 2'; '2=kidney' names the class); blank: all"
)


def model_card(source: str | None) -> ModelCard | None:
    """The card of a model package folder, read without loading the model; else None."""
    if source is None or not is_model_package(Path(source)):
        return None
    try:
        return ModelCard.read(package_file(Path(source), CARD_FILE))
    except MedaiError:
        return None


class ClassifierPicker(ModelPicker):
    """The model picker, listing only classifier packages (by the titles Segment shows).

    Filtered here until ``ModelPicker`` takes a task; bundles, whose task is
    unknown before loading, come in through "Load from folder...".
    """

    def _choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        entries = [entry for entry in list_models() if self._is_classifier(entry)]
        items = picker_items(entries, self._loaded_sources)
        self._entries = {source: entry for (_text, source), entry in zip(items, entries)}
        return items + [(text, action) for text, action in _LOAD_ACTIONS.items()]

    @staticmethod
    def _is_classifier(entry: ModelEntry) -> bool:
        card = model_card(str(entry.location)) if entry.kind == "package" else None
        return card is not None and card.task == TASK


class ClassifyWidget(Container):
    """Pick an image, a classifier and a scope; Run; results as table, text and heat map."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = napari_viewer
        self.form = Container(labels=True, scrollable=True)
        self.image = create_widget(annotation=Image, label="Image")
        self.models = ClassifierPicker(self.native, self._modality, self._update_run_button)
        self.model = self.models.combo
        self.trust = CheckBox(text="Trust this MONAI bundle (its configs run code)")
        self.scope = ComboBox(choices=list(SCOPES), value="every slice", label="Classify")
        self.axis = ComboBox(choices=["z", "y", "x"], value="z", label="Slice axis")
        self.boxes = create_widget(annotation=Shapes, label="Boxes", options=OPTIONAL)
        self.points = create_widget(annotation=Points, label="or points", options=OPTIONAL)
        self.box_size = SpinBox(value=32, min=4, max=1024, label="Box size (px)")
        self.cam = CheckBox(text="Grad-CAM heat map", value=True)
        self.cam_class = ComboBox(choices=[PREDICTED], label="CAM class")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="Device")
        self.run_button = PushButton(text="Run")
        self.source = ComboBox(choices=list(SOURCES), value=SOURCES[0], label="Examples")
        self.labels = create_widget(annotation=Labels, label="Labels", options=OPTIONAL)
        self.values = LineEdit(value="", label="Label values", tooltip=VALUES_TIP)
        self.train_time = SpinBox(value=60, min=1, max=3600, label="Training time (s)")
        self.train_button = PushButton(text="Train a classifier")
        self.evaluation = Evaluation(self)
        rows = [
            self.image, self.model, self.models.delete_button, self.trust, self.scope,
            self.axis, self.boxes, self.points, self.box_size, self.cam, self.cam_class,
            self.device, self.run_button, self.source, self.labels, self.values,
            self.train_time, self.train_button, *self.evaluation.widgets,
        ]  # fmt: skip
        # Long choices (layer names, model titles) must not widen the form: narrowed before
        # they join it (magicgui fixes the scroll area's width as they do), then the width
        # follows the fields as napari's style sheet sizes them.
        for row in rows:
            if isinstance(row.native, QComboBox):
                narrow(row.native, 12)
        self.form.extend(rows)
        fit_width(self.form.root_native_widget)
        self.status = Label(value="")
        #: The last reason or warning the status line showed (cleared once it is past).
        self._note: str | None = None
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.runner = JobRunner()
        self.table = new_result_table()
        self.curve = slice_curve(napari_viewer)
        self.training = training_plot(napari_viewer)
        self.metrics = MetricsView(napari_viewer)
        for view in (self.curve, self.table, self.training, self.metrics):  # full width
            self.form.native.layout().addWidget(view)
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        for part in (self.form.root_native_widget, self.status.native, self.runner):
            layout.addWidget(part)
        #: The last completed run's result, and the CAM layer it showed.
        self.result: ClassifyResult | None = None
        self.cam_layer = None
        fields = (self.image, self.scope, self.boxes, self.points, self.source, self.labels)
        for field in fields:
            field.changed.connect(self._update_run_button)
        self.image.changed.connect(self._on_image_chosen)
        self.run_button.changed.connect(self.run)
        self.train_button.changed.connect(self.train)
        self.runner.runningChanged.connect(self._update_run_button)
        self.curve.clicked.connect(self.go_to_slice)
        self.models.refresh()

    def reset_choices(self, *_args) -> None:
        """Refresh the layer pickers (napari calls this when layers change).

        Only they: the model list is read from disk (every card), so it is re-read
        when the user opens it or picks another image, never on each layer change.
        """
        for picker in (self.image, self.boxes, self.points, self.labels):
            picker.reset_choices()
        self._update_run_button()

    def _modality(self) -> str:
        image = self.image.value
        return layer_modality(image) if image is not None else ""

    def _on_image_chosen(self, _value: Any = None) -> None:
        if self.models.automatic:
            self.models.refresh()

    def _problem(self) -> str | None:
        """Why Run cannot start now, or None."""
        if self.runner.running:
            return "a run is in progress"
        if self.image.value is None:
            return "open a 3D image first"
        if self.model_path() is None:
            return "choose a classifier model, load one, or train one below"
        if SCOPES[self.scope.value] == "regions" and self.box_layer() is None:
            return "draw boxes in a Shapes layer, or add a Points layer"
        return None

    def _update_run_button(self, *_args) -> None:
        problem = self._problem()
        self.run_button.enabled = problem is None
        self.run_button.tooltip = problem or "classify with these settings"
        self.models.update(self.runner.running)
        self.trust.visible = is_bundle_folder(Path(self.model_path() or "."))
        self._show_fields()
        self._update_cam_classes()
        self.evaluation.update()
        why = self.examples_problem()
        self.train_button.enabled = why is None
        slices = self.from_labels()
        what = "every slice's labels" if slices else "the boxes' 'class' feature"
        self.train_button.tooltip = why or f"train on {what}; the best model is picked for Run"
        if not self.runner.running:
            self._say(problem or self._mismatch())

    def _say(self, note: str | None) -> None:
        """Show why Run cannot start (or a warning); clear it, and only it, once it is past."""
        if note:
            self.status.value = note
        elif self.status.value == self._note:
            self.status.value = ""
        self._note = note

    def _show_fields(self) -> None:
        """Show only the fields the chosen scope and examples use."""
        slices = self.from_labels()
        boxes = SCOPES[self.scope.value] == "regions" or not slices
        self.labels.visible = self.values.visible = slices
        self.boxes.visible = self.points.visible = self.box_size.visible = boxes
        self.axis.visible = SCOPES[self.scope.value] == "slices" or slices
        self.curve.setVisible(SCOPES[self.scope.value] == "slices")

    def _update_cam_classes(self) -> None:
        """Offer the picked model's class names for the heat map (its card, read, not loaded)."""
        card = model_card(self.model_path())
        count = 0 if card is None else card.num_classes
        choices = [PREDICTED, *(card.label_names.get(k, f"class {k}") for k in range(count))]
        if list(self.cam_class.choices) != choices:
            self.cam_class.choices = choices
            self.cam_class.value = PREDICTED

    def _mismatch(self) -> str | None:
        """A warning when the picked model is made for another modality than the image's."""
        entry, image = self.models.entry(), self.image.value
        if entry is None or image is None:
            return None
        return modality_mismatch(entry, entry.title or entry.name, layer_modality(image))

    def model_path(self) -> str | None:
        """The picked model (a registry name or a folder), or None."""
        return self.models.source

    def pick_model(self, path: str | Path) -> None:
        """Pick the model at ``path``: as listed when the picker lists it, else as loaded."""
        self.models.automatic, self.models.source = False, str(path)
        self.models.refresh()
        if self.models.source != str(path):
            self.models.add_source(path)

    def from_labels(self) -> bool:
        """Whether the examples are slices labelled by a Labels layer (else boxes)."""
        return self.source.value == SOURCES[1]

    def examples_problem(self) -> str | None:
        """Why Train (or Evaluate) cannot read examples now, or None."""
        if self.runner.running:
            return "a run is in progress"
        if self.image.value is None:
            return "open a 3D image first"
        if self.from_labels():
            return None if self.labels.value is not None else "choose a Labels layer"
        if self.box_layer() is None:
            return "choose a box layer whose boxes have a 'class' feature"
        return None

    def config(self) -> ClassifyConfig:
        """The form as the core config (the CLI fills the same)."""
        choices = list(self.cam_class.choices)
        cam_class = choices.index(self.cam_class.value) - 1
        return ClassifyConfig(
            scope=SCOPES[self.scope.value],
            axis="zyx".index(self.axis.value),
            device=self.device.value,
            cam=self.cam.value,
            cam_class=None if cam_class < 0 else cam_class,
        )

    def box_layer(self) -> Shapes | Points | None:
        """The Boxes layer, else the points layer, else None."""
        return self.boxes.value if self.boxes.value is not None else self.points.value

    def regions(self, layer: Shapes | Points, image: Image) -> list:
        """The voxel boxes of ``layer`` on ``image`` (points get the box size)."""
        if isinstance(layer, Shapes):
            return regions_from_shapes(layer, image)
        size = int(self.box_size.value)
        return regions_from_points(layer, image, (size, size))

    def run(self, *_args) -> None:
        """Start classifying with the form's settings (in the worker)."""
        if self._problem() is not None:
            return
        image, config, layer = self.image.value, self.config(), None
        try:
            if image.rgb or image.multiscale or image.ndim not in (3, 4):
                raise MedaiError(f"'{image.name}' is not a greyscale 3D image")
            volume = volume_from_layer(image)
            regions = None
            if config.scope == "regions":
                layer = self.box_layer()
                regions = self.regions(layer, image)
        except MedaiError as error:
            show_error(f"Classify failed: {error}")
            return
        source = self.model_path()
        job = partial(catalogue.CLASSIFY, source, self.trust.value, volume, config, regions)
        self.runner.start(job, partial(self._show, image, layer, source), title="Classify")

    def train(self, *_args) -> None:
        """Train a new classifier on the boxes' classes or labelled slices; pick it when done."""
        if self.examples_problem() is not None:
            return
        image, layer, labels = self.image.value, self.box_layer(), self.labels.value
        out = user_model_dir() / f"classifier-{time.strftime('%Y%m%d-%H%M%S')}"
        config = ClassifierTrainConfig(
            out, max_time_s=float(self.train_time.value), device=self.device.value
        )
        try:
            volume = volume_from_layer(image)
            held_out = parse_slices(self.evaluation.slices.value)
            if self.from_labels():
                axis = "zyx".index(self.axis.value)
                values = label_values(labels, self.values.value)
                training_slices(volume.spatial_shape[axis], held_out)
                label_map = named_label_map(labels, self.values.value)
                args = (volume, label_map, values, axis, config, held_out)
                job = partial(catalogue.TRAIN_CLASSIFIER_ON_SLICES, *args)
            else:
                numbers, names = class_labels(layer)
                regions = self.regions(layer, image)
                training_boxes(regions, held_out)
                args = (volume, regions, numbers, names, config, held_out)
                job = partial(catalogue.TRAIN_CLASSIFIER_ON_BOXES, *args)
        except MedaiError as error:
            show_error(f"Train classifier failed: {error}")
            return
        self.training.clear()
        self.metrics.show_metrics(None)
        kept = f"; slices {slices_text(held_out)} are held out" if held_out else ""
        self.status.value = f"training; the best model goes to {out.name}{kept}"
        noun = "slices" if self.from_labels() else "boxes"
        self.runner.start(
            job,
            partial(self._trained, noun),
            lambda event: plot_training(self.training, event.payload),
            title="Train classifier",
        )

    def _trained(self, noun: str, result) -> None:
        self.pick_model(result.best_path)
        self.metrics.show_metrics(result.metrics)
        self.status.value = trained_text(result, noun)

    def _show(self, image: Image, layer: Shapes | Points | None, source: str, result) -> None:
        if layer is not None:
            annotate_layer(layer, result)
        self.result = result
        model_name = result.provenance.get("model", Path(source).name)
        show_results(self.table, result_table(result))
        if result.scope == "slices":
            positive = max(result.class_names)
            values = result.curve(positive)
            label = f"p({result.class_names[positive]})"
            self.curve.set_series(CURVE, range(len(values)), values, label=label)
        if result.cam is not None:
            from napari_medai._napari.segmentation import show_segmentation

            data = cam_layer_data(result, image, source, model_name)
            self.cam_layer = show_segmentation(self._viewer, [data])[0]
        self.status.value = result.summary(model_name)

    def go_to_slice(self, index: float) -> None:
        """Move the viewer to slice ``index`` of the last per-slice run's image axis."""
        image = self.image.value
        if image is None or self.result is None or self.result.scope != "slices":
            return
        index = float(np.clip(round(index), 0, len(self.result.predictions) - 1))
        self.curve.set_marker_x(index)
        centre = (np.asarray(image.data.shape[-3:], dtype=float) - 1) / 2
        centre[self.result.axis] = index
        world = np.asarray(image.data_to_world(centre))
        self._viewer.dims.set_point(range(len(world)), tuple(world))

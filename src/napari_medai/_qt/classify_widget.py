"""Dock widget "Classify": a scan, its slices or boxes through a classifier, with Grad-CAM.

Thin by design: a magicgui form (its layer pickers follow the layer list by
themselves) becomes a :class:`ClassifyConfig`; :func:`load_and_classify_job`
runs in the :class:`JobRunner` (progress, Cancel, errors as notifications);
the result fills a table, the box layer's features and text, a per-slice
curve (click it to go to that slice) and the Grad-CAM layer. Nothing is
touched unless a run completes. "Train" learns from the boxes' classes or a
Labels layer's slices but the "Held-out slices", plots loss and held-out AUC
live, and shows the held-out figures (``classify_results``); "Evaluate"
scores the Model on the held-out slices' examples (``classify_evaluate``).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QSizePolicy

from napari_medai._napari.classification import (
    annotate_layer,
    cam_layer_data,
    class_labels,
    label_values,
    load_and_classify_job,
    regions_from_points,
    regions_from_shapes,
    result_table,
    train_from_boxes_job,
    train_from_label_slices_job,
)
from napari_medai._napari.layers import volume_from_layer
from napari_medai._qt.classify_evaluate import Evaluation
from napari_medai._qt.classify_results import (
    MetricsView,
    figure_text,
    new_result_table,
    plot_training,
    show_results,
    slice_curve,
    training_plot,
)
from napari_medai._qt.job_runner import JobRunner
from napari_medai.core.classification.config import ClassifyConfig, ClassifyResult
from napari_medai.core.classification.heldout import parse_slices, slices_text
from napari_medai.core.errors import MedaiError

if TYPE_CHECKING:
    import napari

CURVE = "per-slice probability"
SCOPES = {"whole volume": "volume", "every slice": "slices", "boxes": "regions"}
DEVICES = ("auto", "cpu", "cuda", "mps")
SOURCES = ("boxes (Shapes/Points with a class feature)", "slices labelled by a Labels layer")
OPTIONAL = {"nullable": True}
SLICES_TIP = "a slice is class k when it holds label k ('5', '1, 2'); blank: all"


class ClassifyWidget(Container):
    """Pick an image, a classifier and a scope; Run; results as table, text and heat map."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.image = create_widget(annotation=Image, label="Image")
        self.model = FileEdit(mode="d", label="Model", tooltip="a classifier model package folder")
        self.trust = CheckBox(text="Trust this MONAI bundle (its configs run code)")
        self.scope = ComboBox(choices=list(SCOPES), value="every slice", label="Classify")
        self.axis = ComboBox(choices=["z", "y", "x"], value="z", label="Slice axis")
        self.boxes = create_widget(annotation=Shapes, label="Boxes", options=OPTIONAL)
        self.points = create_widget(annotation=Points, label="or points", options=OPTIONAL)
        self.box_size = SpinBox(value=32, min=4, max=1024, label="Box size (px)")
        self.cam = CheckBox(text="Grad-CAM heat map", value=True)
        self.cam_class = SpinBox(value=-1, min=-1, max=999, label="CAM class (-1: predicted)")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="Device")
        self.run_button = PushButton(text="Run")
        self.source = ComboBox(choices=list(SOURCES), value=SOURCES[0], label="Examples")
        self.labels = create_widget(annotation=Labels, label="Labels", options=OPTIONAL)
        self.values = LineEdit(value="", label="Label values", tooltip=SLICES_TIP)
        self.train_time = SpinBox(value=60, min=1, max=3600, label="Training time (s)")
        self.train_button = PushButton(text="Train a classifier")
        self.evaluation = Evaluation(self)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.extend(
            [
                self.image, self.model, self.trust, self.scope, self.axis, self.boxes,
                self.points, self.box_size, self.cam, self.cam_class, self.device,
                self.run_button, self.source, self.labels, self.values, self.train_time,
                self.train_button, *self.evaluation.widgets,
            ]
        )  # fmt: skip
        self.runner = JobRunner()
        self.table = new_result_table()
        self.curve = slice_curve(napari_viewer)
        self.training = training_plot(napari_viewer)
        self.metrics = MetricsView(napari_viewer)
        extras = (self.status.native, self.runner, self.curve, self.table, self.training)
        for extra in (*extras, self.metrics):  # full width, below the form
            self.native.layout().addWidget(extra)
        #: The last completed run's result, and the CAM layer it showed.
        self.result: ClassifyResult | None = None
        self.cam_layer = None
        fields = (self.image, self.model, self.scope, self.boxes, self.points, self.source)
        for field in (*fields, self.labels):
            field.changed.connect(self._update_run_button)
        self.run_button.changed.connect(self.run)
        self.train_button.changed.connect(self.train)
        self.runner.runningChanged.connect(self._update_run_button)
        self.curve.clicked.connect(self.go_to_slice)
        self._update_run_button()

    def reset_choices(self, *args) -> None:
        """Refresh the layer pickers (napari calls this when layers change)."""
        super().reset_choices(*args)
        self._update_run_button()

    def _problem(self) -> str | None:
        """Why Run cannot start now, or None."""
        if self.runner.running:
            return "a run is in progress"
        if self.image.value is None:
            return "open a 3D image first"
        if self.model_path() is None:
            return "choose a classifier model folder"
        if SCOPES[self.scope.value] == "regions" and self.box_layer() is None:
            return "draw boxes in a Shapes layer, or add a Points layer"
        return None

    def _update_run_button(self, *_args) -> None:
        problem = self._problem()
        self.run_button.enabled = problem is None
        self.run_button.tooltip = problem or "classify with these settings"
        slices = self.from_labels()
        self.labels.visible = self.values.visible = slices
        self.evaluation.update()
        why = self.examples_problem()
        self.train_button.enabled = why is None
        what = "every slice's labels" if slices else "the boxes' 'class' feature"
        self.train_button.tooltip = why or f"train on {what}; the best model is picked for Run"
        if problem is not None and not self.runner.running:
            self.status.value = problem

    def model_path(self) -> str | None:
        """The Model field's folder, or None when empty."""
        text = str(self.model.value)
        return None if not text or text == "." else text

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
        return ClassifyConfig(
            scope=SCOPES[self.scope.value],
            axis="zyx".index(self.axis.value),
            device=self.device.value,
            cam=self.cam.value,
            cam_class=None if self.cam_class.value < 0 else int(self.cam_class.value),
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
        """Start classifying with the form's settings."""
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
        job = partial(load_and_classify_job, source, self.trust.value, volume, config, regions)
        self.runner.start(job, partial(self._show, image, layer, source), title="Classify")

    def train(self, *_args) -> None:
        """Train a new classifier on the boxes' classes or labelled slices; pick it when done."""
        from napari_medai.core.classification.training import ClassifierTrainConfig
        from napari_medai.core.models.registry import user_model_dir

        if self.examples_problem() is not None:
            return
        image, layer, labels = self.image.value, self.box_layer(), self.labels.value
        try:
            volume = volume_from_layer(image)
            held_out = parse_slices(self.evaluation.slices.value)
            if self.from_labels():
                values, axis = label_values(labels, self.values.value), "zyx".index(self.axis.value)
                what = partial(train_from_label_slices_job, volume, labels, values, axis)
            else:
                class_labels(layer)
                what = partial(train_from_boxes_job, volume, self.regions(layer, image), layer)
        except MedaiError as error:
            show_error(f"Train classifier failed: {error}")
            return
        noun = "slices" if self.from_labels() else "boxes"
        out = user_model_dir() / f"classifier-{time.strftime('%Y%m%d-%H%M%S')}"
        config = ClassifierTrainConfig(
            out, max_time_s=float(self.train_time.value), device=self.device.value
        )
        self.training.clear()
        self.metrics.show_metrics(None)
        kept = f"; slices {slices_text(held_out)} are held out" if held_out else ""
        self.status.value = f"training; the best model goes to {out.name}{kept}"
        self.runner.start(
            partial(what, config, held_out),
            partial(self._trained, noun),
            lambda event: plot_training(self.training, event.payload),
            title="Train classifier",
        )

    def _trained(self, noun: str, result) -> None:
        self.model.value = str(result.best_path)
        metrics = result.metrics
        self.metrics.show_metrics(metrics)
        if metrics is None:
            self.status.value = f"saved {result.best_path.name}; nothing was held out to score it"
            return
        on, auc = metrics["computed_on"], figure_text(metrics["macro"]["roc_auc"])
        self.status.value = (
            f"held-out accuracy {metrics['accuracy']:.3f}, macro ROC AUC {auc} on {on['cases']} "
            f"{noun} ({on['description']})"
        )

    def _show(self, image: Image, layer: Shapes | Points | None, source: str, outcome) -> None:
        model, result = outcome
        if layer is not None:
            annotate_layer(layer, result)
        self.result = result
        show_results(self.table, result_table(result))
        if result.scope == "slices":
            positive = max(result.class_names)
            values = result.curve(positive)
            label = f"p({result.class_names[positive]})"
            self.curve.set_series(CURVE, range(len(values)), values, label=label)
        if result.cam is not None:
            from napari_medai._napari.segmentation import show_segmentation

            data = cam_layer_data(result, image, source, model.name)
            self.cam_layer = show_segmentation(self._viewer, [data])[0]
        self.status.value = result.summary(model.name)

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

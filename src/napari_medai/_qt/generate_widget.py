"""Dock widget "Generate": train a GAN on the open scan, sample it, preview augmentations.

Thin by design: the magicgui form becomes a :class:`GanConfig`, the core jobs
(:mod:`napari_medai.core.generative`) run in the :class:`JobRunner`, losses go
to the live plot and preview grids to a picture under it. Samples become
"synthetic ..." layers on their own grid (:mod:`napari_medai._napari.generation`).
The augmentation section shows what segmentation training's augmentations do
to the displayed slice and hands the chosen strengths to the Train widget.
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
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_medai._napari.generation import (
    add_or_update,
    augmentation_for,
    preview_layer,
    set_augmentation,
    synthetic_layers,
)
from napari_medai._napari.layers import label_map_from_layer, volume_from_layer
from napari_medai._qt.job_runner import JobRunner
from napari_medai._qt.plot import LivePlot
from napari_medai.core import catalogue
from napari_medai.core.generative.config import KINDS, GanConfig
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.training.strengths import AUGMENTATIONS, AugmentStrengths

if TYPE_CHECKING:
    import napari

PREVIEW_WIDTH_PX = 360


def default_generator_dir(now: float | None = None) -> Path:
    """A new folder under the user model folder, named by the date (never by the scan)."""
    from napari_medai.core.models.registry import user_model_dir

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path, number = user_model_dir() / f"gan-{stamp}", 1
    while path.exists():
        number += 1
        path = path.with_name(f"gan-{stamp}-{number}")
    return path


def _train_job(volume: Any, labels: Any, config: GanConfig) -> Job:
    """GAN training in a worker process, which keeps torch's GIL holds off the GUI."""
    return catalogue.TRAIN_GAN(volume, labels, config)


def _sample_job(path: Path, count: int, labels: Any, deform: bool, seed: int | None) -> Job:
    """Load the generator, cut masks for a conditional one, and sample (all off the GUI thread)."""
    from napari_medai.core.generative.config import GenerativeError
    from napari_medai.core.generative.sample import (
        is_conditional,
        load_generator,
        masks_from_labels,
        sample_job,
    )

    yield Progress(0.0, "loading the generator")
    model = load_generator(path)
    masks = None
    if is_conditional(model):
        if labels is None:
            raise GenerativeError("this generator turns label maps into images: pick labels")
        masks = masks_from_labels(labels, count, int(model.card.patch_size[-1]), seed, deform)
    return (yield from sample_job(model, count, masks, seed))


def _augment_job(image: np.ndarray, strengths: AugmentStrengths) -> Job:
    from napari_medai.core.training.dataset import preview_augmentations

    yield Progress(0.0, "augmenting the slice")
    return preview_augmentations(image, strengths)


class GenerateWidget(QWidget):
    """Train a GAN (unconditional, or label map -> image), sample it, preview augmentations."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        #: The generator package Sample uses (the last trained or the one loaded).
        self.generator_path: Path | None = None
        #: The last quality report and the last samples' layers.
        self.quality: dict[str, Any] = {}
        self.sample_layers: list[Any] = []
        # Choices read from this viewer (not magicgui's docked-viewer lookup), so the
        # pickers work in any viewer model; they are refreshed on layer changes.
        self.image = ComboBox(label="image", choices=self._layers_of(Image))
        self.labels = ComboBox(label="labels", choices=self._layers_of(Labels), nullable=True)
        self.labels.value = None
        self.kind = ComboBox(label="kind", choices=KINDS, value=KINDS[0])
        self.patch = SpinBox(label="patch (px)", min=32, max=256, step=16, value=64)
        self.budget = FloatSpinBox(label="time budget (s)", min=1, max=24 * 3600, value=60)
        self.train_button = PushButton(text="Train")
        self.count = SpinBox(label="samples", min=1, max=1000, value=16)
        self.deform = CheckBox(text="deform the masks", value=True)
        self.package = FileEdit(label="generator", mode="d", value="")
        self.sample_button = PushButton(text="Sample")
        self.strengths = {
            name: FloatSlider(label=name, min=0.0, max=3.0, step=0.1, value=value)
            for name, value in augmentation_for(napari_viewer).to_dict().items()
        }
        self.augment_button = PushButton(text="Preview augmentations")
        self.use_button = PushButton(text="Use for Train")
        self.image.tooltip = "The scan to learn 2D axial patches from"
        self.labels.tooltip = (
            "conditional: the label maps to learn from; unconditional: patches only inside them"
        )
        self.kind.tooltip = "unconditional: noise -> image; conditional: label map -> image"
        self.deform.tooltip = "Randomly rotate, scale and warp the label crops before generating"
        self.use_button.tooltip = "The Train widget uses these strengths from its next run"
        self.runner = JobRunner()
        self.runner.cancel_button.setText("Stop")
        self.plot = LivePlot(
            napari_viewer, x_label="step", y_label="loss", empty_text="GAN losses show here"
        )
        self.plot.set_series("generator", [], [], label="generator")
        self.plot.set_series("critic", [], [], label="critic")
        self.preview = QLabel("Samples (bottom row) under held-out real patches show here")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setWordWrap(True)
        self.preview.setMinimumHeight(PREVIEW_WIDTH_PX // 4)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        train_form = Container(
            widgets=[self.image, self.labels, self.kind, self.patch, self.budget, self.train_button]
        )
        sample_form = Container(widgets=[self.package, self.count, self.deform, self.sample_button])
        augment_form = Container(
            widgets=[*self.strengths.values(), self.augment_button, self.use_button]
        )
        layout = QVBoxLayout(self)
        for widget in (train_form.native, self.runner, self.plot, self.preview, self.status):
            layout.addWidget(widget)
        layout.addWidget(QLabel("<b>Sample</b>"))
        layout.addWidget(sample_form.native)
        layout.addWidget(QLabel("<b>Training augmentations</b>"))
        layout.addWidget(augment_form.native)
        layout.addStretch(1)
        self._forms = (train_form, sample_form, augment_form)
        self.train_button.changed.connect(self.train)
        self.sample_button.changed.connect(self.sample)
        self.augment_button.changed.connect(self.preview_augmentations)
        self.use_button.changed.connect(self.use_strengths)
        self.package.changed.connect(self._on_package)
        self.image.changed.connect(self._update_buttons)
        self.runner.runningChanged.connect(self._update_buttons)
        napari_viewer.layers.events.inserted.connect(self._refresh)
        napari_viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def _layers_of(self, kind: type) -> Any:
        return lambda _widget: [layer for layer in self._viewer.layers if isinstance(layer, kind)]

    # Training ------------------------------------------------------------------------

    def config(self) -> GanConfig:
        """The GAN settings from the form."""
        return GanConfig(
            out_dir=default_generator_dir(),
            kind=self.kind.value,
            patch_size=int(self.patch.value),
            max_time_s=float(self.budget.value),
            max_iters=None,
        )

    def train(self) -> None:
        """Train on a snapshot of the picked image (and labels) in the job runner."""
        image, labels = self.image.value, self.labels.value
        if image is None or self.runner.running:
            return
        from napari_medai.core.training.trainer import training_threads

        config = self.config()
        config.num_threads = training_threads(keep_free=1)
        volume = volume_from_layer(image)
        label_map = None if labels is None else label_map_from_layer(labels)
        if label_map is not None:
            label_map.array = np.array(label_map.array, copy=True)
        self.plot.clear()
        self._spacing = tuple(float(s) for s in volume.geometry.spacing[1:])
        self.runner.start(
            partial(_train_job, volume, label_map, config),
            self._trained,
            self._on_progress,
            title="Train GAN",
        )

    def _on_progress(self, event: Progress) -> None:
        payload = event.payload
        if not isinstance(payload, dict) or "loss_g" not in payload:
            return
        step = int(payload["iteration"])
        self.plot.append("generator", step, float(payload["loss_g"]))
        self.plot.append("critic", step, float(payload["loss_d"]))
        if "preview" in payload:
            self._show_preview(payload["preview"])

    def _show_preview(self, grid: np.ndarray) -> None:
        pixels = np.ascontiguousarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
        height, width = pixels.shape
        image = QImage(pixels.data, width, height, width, QImage.Format.Format_Grayscale8).copy()
        self.preview.setPixmap(
            QPixmap.fromImage(image).scaledToWidth(
                PREVIEW_WIDTH_PX, Qt.TransformationMode.FastTransformation
            )
        )

    def _trained(self, result: Any) -> None:
        self.generator_path = Path(result.path)
        self.quality = dict(result.quality)
        q = self.quality
        self.status.setText(
            f"Generator saved in {result.path}. Against held-out real patches: "
            f"MMD² {q['mmd2']:.4f}, two-sample accuracy {q['two_sample_accuracy']:.2f} "
            f"(0.5 = indistinguishable), MS-SSIM diversity {q['ms_ssim_diversity']:.2f} "
            f"(real {q['ms_ssim_diversity_real']:.2f}), histogram distance "
            f"{q['histogram_distance']:.3f}"
        )
        self._update_buttons()

    # Sampling ------------------------------------------------------------------------

    def _on_package(self, value: Any) -> None:
        path = Path(str(value)) if value else None
        self.generator_path = path if path is not None and path.is_dir() else None
        self._update_buttons()

    def sample(self) -> None:
        """Generate ``count`` samples into "synthetic ..." layers."""
        if self.generator_path is None or self.runner.running:
            return
        labels = self.labels.value
        label_map = None if labels is None else label_map_from_layer(labels)
        count = int(self.count.value)
        job = partial(_sample_job, self.generator_path, count, label_map, self.deform.value, None)
        self.runner.start(job, self._show_samples, title="Sample")

    def _show_samples(self, samples: Any) -> None:
        title = f"{samples.metadata.get('kind', 'GAN')} samples ({len(samples.images)})"
        # Beside everything shown (display only; the stack keeps its own grid, no affine),
        # so samples never sit on top of a patient's anatomy.
        low, high = np.asarray(self._viewer.layers.extent.world)[:, -3:]
        beside = (float(low[0]), float(low[1]), float(high[2]) + 10.0)
        self.sample_layers = []
        for data, kwargs, kind in synthetic_layers(samples, title):
            layer = getattr(self._viewer, f"add_{kind}")(data, translate=beside, **kwargs)
            self.sample_layers.append(layer)
        self._viewer.dims.set_point(self._viewer.dims.ndim - 3, beside[0])
        self._viewer.reset_view()
        self._viewer.layers.selection.active = self.sample_layers[0]
        self.status.setText(
            f"{len(samples.images)} synthetic samples in '{self.sample_layers[0].name}', "
            "one per slice, shown beside the scan on their own grid"
        )

    # Augmentation preview --------------------------------------------------------------

    def chosen_strengths(self) -> AugmentStrengths:
        """The strengths set on the sliders."""
        return AugmentStrengths(
            **{name: float(self.strengths[name].value) for name in AUGMENTATIONS}
        )

    def preview_augmentations(self) -> None:
        """Show augmented copies of the displayed axial slice as a layer."""
        image = self.image.value
        if image is None or self.runner.running:
            return
        from napari_medai._napari.training import displayed_slice  # imports torch

        z = displayed_slice(self._viewer, image)
        slice_ = np.asarray(image.data[z], dtype=np.float32)
        spacing = (1.0, *(float(s) for s in image.scale[-2:]))

        def show(stack: np.ndarray) -> None:
            data, kwargs, kind = preview_layer(stack, spacing, f"augmentations of slice {z}")
            kwargs["name"] = "synthetic augmentation preview"
            kwargs["contrast_limits"] = tuple(image.contrast_limits)
            add_or_update(self._viewer, (data, kwargs, kind))

        job = partial(_augment_job, slice_, self.chosen_strengths())
        self.runner.start(job, show, title="Augmentation preview")

    def use_strengths(self) -> AugmentStrengths:
        """Hand the chosen strengths to the Train widget of this viewer."""
        strengths = self.chosen_strengths()
        set_augmentation(self._viewer, strengths)
        self.status.setText(f"Train uses augmentation strengths {strengths.to_dict()}")
        return strengths

    # Helpers ---------------------------------------------------------------------------

    def _refresh(self, _event: Any = None) -> None:
        for form in self._forms:
            form.reset_choices()
        self._update_buttons()

    def _update_buttons(self, _value: Any = None) -> None:
        idle = not self.runner.running
        has_image = self.image.value is not None
        self.train_button.enabled = idle and has_image
        self.train_button.tooltip = "" if has_image else "Open or pick an image to learn from"
        self.augment_button.enabled = idle and has_image
        self.sample_button.enabled = idle and self.generator_path is not None
        self.sample_button.tooltip = (
            "" if self.generator_path is not None else "Train a GAN or pick a generator package"
        )

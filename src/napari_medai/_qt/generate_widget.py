"""Dock widget "Generate": train a GAN on the open scan, sample it, preview augmentations.

Thin by design: the magicgui form becomes a :class:`GanConfig`, and the jobs
(training, sampling, the augmentation preview) are catalogue entries that run
in the worker process, since each imports torch; napari's process never does.
Quick refusals (no scan, no labels for a conditional GAN, a package that is
no generator) come from torch-free checks before any worker starts. Losses go
to the live plot and preview grids to a picture under it; samples and the
augmentation preview become "synthetic ..." layers beside the scan, on its own
slices (:mod:`napari_medai._napari.generation`), so the slice slider keeps its
range and step. The augmentation section hands the chosen strengths to Train.
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
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from napari_medai._napari.generation import (
    add_or_update,
    augmentation_for,
    beside,
    centred_rows,
    mosaic,
    own_grid,
    preview_layer,
    set_augmentation,
    synthetic_layers,
)
from napari_medai._napari.layers import label_map_from_layer, volume_from_layer
from napari_medai._napari.training import displayed_slice
from napari_medai._qt.job_runner import JobRunner
from napari_medai._qt.parts import narrow
from napari_medai._qt.plot import LivePlot
from napari_medai.core import catalogue
from napari_medai.core.errors import MedaiError
from napari_medai.core.generative.config import KINDS, GanConfig, check_training_input
from napari_medai.core.jobs import Progress
from napari_medai.core.models.card import CARD_FILE, GENERATION_TASK, ModelCard
from napari_medai.core.training.config import training_threads
from napari_medai.core.training.strengths import AUGMENTATIONS, AugmentStrengths

if TYPE_CHECKING:
    import napari

PREVIEW_WIDTH_PX = 360
#: The loss plot's height: enough for its axes and legend, bounded so it never grows the dock.
PLOT_HEIGHT_PX = 180
#: Augmented copies of the displayed slice, shown beside it as one 2x2 mosaic (twice the
#: slice's size each way: enough to see the range of the strengths, small enough that
#: the scan stays the larger part of the view).
AUGMENTED_COPIES, MOSAIC_COLUMNS = 4, 2


def default_generator_dir(now: float | None = None) -> Path:
    """A new folder under the user model folder, named by the date (never by the scan)."""
    from napari_medai.core.models.registry import user_model_dir

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path, number = user_model_dir() / f"gan-{stamp}", 1
    while path.exists():
        number += 1
        path = path.with_name(f"gan-{stamp}-{number}")
    return path


class GenerateWidget(QWidget):
    """Train a GAN (unconditional, or label map -> image), sample it, preview augmentations."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = napari_viewer
        #: The generator package Sample uses (the last trained or the one loaded), and its card.
        self.generator_path: Path | None = None
        self._card: ModelCard | MedaiError | None = None
        #: The last quality report and the last samples' layers.
        self.quality: dict[str, Any] = {}
        self.sample_layers: list[Any] = []
        # Choices read from this viewer (not magicgui's docked-viewer lookup), so the
        # pickers work in any viewer model; they are refreshed on layer changes.
        self.image = ComboBox(label="Image", choices=self._layers_of(Image))
        self.labels = ComboBox(label="Labels", choices=self._layers_of(Labels), nullable=True)
        self.labels.value = None
        for picker in (self.image, self.labels):  # a long layer name must not widen the dock
            narrow(picker.native)
        self.kind = ComboBox(label="Kind", choices=KINDS, value=KINDS[0])
        self.patch = SpinBox(label="Patch (px)", min=32, max=256, step=16, value=64)
        self.budget = FloatSpinBox(label="Time budget (s)", min=1, max=24 * 3600, value=60)
        self.train_button = PushButton(text="Train")
        self.count = SpinBox(label="Samples", min=1, max=1000, value=16)
        self.deform = CheckBox(text="Deform the masks", value=True)
        self.package = FileEdit(label="Generator", mode="d", value="")
        self.sample_button = PushButton(text="Sample")
        self.strengths = {
            name: FloatSlider(label=name.capitalize(), min=0.0, max=3.0, step=0.1, value=value)
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
        self.plot.setFixedHeight(PLOT_HEIGHT_PX)
        self.preview = _wrapping_label("Samples (bottom row) under held-out real patches show here")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # Two rows of eight patches at the preview width: a fixed height, since a wrapping
        # label asks no height for a picture.
        self.preview.setFixedHeight(PREVIEW_WIDTH_PX // 4)
        self.status = _wrapping_label("")
        self._forms = (
            Container(widgets=[self.image, self.labels, self.kind, self.patch, self.budget]),
            Container(widgets=[self.package, self.count, self.deform]),
            Container(widgets=[*self.strengths.values()]),
        )
        self._layout_dock()
        self.train_button.changed.connect(self.train)
        self.sample_button.changed.connect(self.sample)
        self.augment_button.changed.connect(self.preview_augmentations)
        self.use_button.changed.connect(self.use_strengths)
        self.package.changed.connect(self._on_package)
        for picker in (self.image, self.labels):
            picker.changed.connect(self._update_buttons)
        self.runner.runningChanged.connect(self._update_buttons)
        napari_viewer.layers.events.inserted.connect(self._refresh)
        napari_viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def _layout_dock(self) -> None:
        """One scrolling column, so the dock scrolls inside itself when space is short."""
        train_form, sample_form, augment_form = self._forms
        column = Container(
            scrollable=True,
            labels=False,
            widgets=[
                train_form,
                self.train_button,
                sample_form,
                self.sample_button,
                augment_form,
                self.augment_button,
                self.use_button,
            ],
        )
        # Qt parts magicgui has no widget for go between its forms, in reading order.
        rows = column.native.layout()
        for index, widget in enumerate((self.runner, self.plot, self.preview, self.status), 2):
            rows.insertWidget(index, widget)
        rows.insertWidget(rows.indexOf(sample_form.native), QLabel("<b>Sample</b>"))
        rows.insertWidget(
            rows.indexOf(augment_form.native), QLabel("<b>Training augmentations</b>")
        )
        rows.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(column.root_native_widget)
        self._column = column

    def _layers_of(self, kind: type) -> Any:
        return lambda _widget: [layer for layer in self._viewer.layers if isinstance(layer, kind)]

    def _fail(self, title: str, error: Exception) -> None:
        """Say why a job cannot start, in the status line and as a notification."""
        self.status.setText(f"{title} failed: {error}")
        show_error(f"{title} failed: {error}")

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
        """Train on a snapshot of the picked image (and labels) in the worker."""
        image, labels = self.image.value, self.labels.value
        if image is None or self.runner.running:
            return
        config = self.config()
        config.num_threads = training_threads()
        try:
            volume = volume_from_layer(image)
            label_map = None if labels is None else label_map_from_layer(labels)
            check_training_input(volume, label_map, config)
        except (MedaiError, ValueError) as error:
            self._fail("Train GAN", error)
            return
        if label_map is not None:
            label_map.array = np.array(label_map.array, copy=True)
        self.plot.clear()
        self.status.setText("")
        self.runner.start(
            partial(catalogue.TRAIN_GAN, volume, label_map, config),
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
        self._set_generator(Path(result.path))
        self.quality = dict(result.quality)
        self.status.setText(f"{quality_sentence(self.quality)} Saved in {result.path}.")

    # Sampling ------------------------------------------------------------------------

    def _on_package(self, value: Any) -> None:
        path = Path(str(value)) if value else None
        self._set_generator(path if path is not None and path.is_dir() else None)

    def _set_generator(self, path: Path | None) -> None:
        """Sample from ``path`` from now on; its card is read here (small JSON, no torch)."""
        self.generator_path = path
        self._card = None
        if path is not None:
            try:
                self._card = ModelCard.read(path / CARD_FILE)
            except MedaiError as error:
                self._card = error
        self._update_buttons()

    def sample_problem(self) -> str | None:
        """Why Sample cannot run now, in words; None when it can."""
        card = self._card
        if self.generator_path is None:
            return "Train a GAN or pick a generator package"
        if isinstance(card, MedaiError):
            return str(card)
        if card is not None and card.task != GENERATION_TASK:
            return f"'{card.name}' is a {card.task} model, not an image generator"
        conditional = card is not None and card.training.get("kind") == "conditional"
        if conditional and self.labels.value is None:
            return f"'{card.name}' turns label maps into images: pick the Labels to sample from"
        return None

    def sample(self) -> None:
        """Generate ``count`` samples in the worker into "synthetic ..." layers."""
        if self.runner.running:
            return
        problem = self.sample_problem()
        if problem is not None:
            self._fail("Sample", MedaiError(problem))
            return
        labels = self.labels.value
        label_map = None if labels is None else label_map_from_layer(labels)
        count, deform = int(self.count.value), bool(self.deform.value)
        job = partial(catalogue.SAMPLE_GAN, self.generator_path, count, label_map, deform, None)
        self.runner.start(job, self._show_samples, title="Sample")

    def _scan(self) -> Image | None:
        """The picked scan, if it is 3D and still open (synthetic layers stand beside it)."""
        scan = self.image.value
        return scan if scan is not None and scan in self._viewer.layers and scan.ndim >= 3 else None

    def _show_samples(self, samples: Any) -> None:
        title = f"{samples.metadata.get('kind', 'GAN')} samples ({len(samples.images)})"
        scan, count = self._scan(), len(samples.images)
        if scan is None:
            rows, placement, where = (
                count,
                own_grid(samples.pixel_spacing_mm),
                "on a grid of their own",
            )
        else:
            slices = scan.data.shape[-3]
            rows, first = centred_rows(count, slices, displayed_slice(self._viewer, scan))
            placement = beside(scan, first, samples.pixel_spacing_mm)
            where = f"beside '{scan.name}' on its slices {first}-{first + rows - 1}"
        for layer in self.sample_layers:
            if layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
        self.sample_layers = [
            getattr(self._viewer, f"add_{kind}")(data, **kwargs)
            for data, kwargs, kind in synthetic_layers(samples, title, placement, rows)
        ]
        self._viewer.layers.selection.active = self.sample_layers[0]
        self._viewer.reset_view()
        columns = -(-count // rows)
        self.status.setText(
            f"{count} synthetic samples in '{self.sample_layers[0].name}', one per slice"
            + (f" in {columns} columns" if columns > 1 else "")
            + f", {where}."
        )

    # Augmentation preview --------------------------------------------------------------

    def chosen_strengths(self) -> AugmentStrengths:
        """The strengths set on the sliders."""
        return AugmentStrengths(
            **{name: float(self.strengths[name].value) for name in AUGMENTATIONS}
        )

    def preview_augmentations(self) -> None:
        """Augment the displayed axial slice in the worker; show the copies beside it."""
        scan = self._scan()
        if scan is None or self.runner.running:
            return
        z = displayed_slice(self._viewer, scan)
        slice_ = np.asarray(scan.data[..., z, :, :], dtype=np.float32)
        if slice_.ndim != 2:
            self._fail("Augmentation preview", MedaiError(f"'{scan.name}' is not a 3D scan"))
            return

        def show(copies: np.ndarray) -> None:
            grid = mosaic(copies, MOSAIC_COLUMNS)
            data, kwargs, kind = preview_layer(grid, beside(scan, z), "augmentation preview")
            kwargs["contrast_limits"] = tuple(scan.contrast_limits)
            new = kwargs["name"] not in self._viewer.layers
            add_or_update(self._viewer, (data, kwargs, kind))
            if new:
                self._viewer.reset_view()
            self.status.setText(
                f"{len(copies)} augmented copies of slice {z} of '{scan.name}', beside it on "
                "that slice"
            )

        job = partial(
            catalogue.PREVIEW_AUGMENTATIONS, slice_, self.chosen_strengths(), AUGMENTED_COPIES
        )
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
        problem = self.sample_problem()
        self.sample_button.enabled = idle and problem is None
        self.sample_button.tooltip = problem or ""


def quality_sentence(quality: dict[str, Any]) -> str:
    """The generator's verdict, then its figures against held-out real patches."""
    verdict = quality.get("verdict", "")
    return (
        f"{verdict} Against held-out real patches: MMD² {quality['mmd2']:.4f}, two-sample "
        f"accuracy {quality['two_sample_accuracy']:.2f} (0.5 = indistinguishable), MS-SSIM "
        f"diversity {quality['ms_ssim_diversity']:.2f} (real "
        f"{quality['ms_ssim_diversity_real']:.2f}), histogram distance "
        f"{quality['histogram_distance']:.3f}."
    ).strip()


def _wrapping_label(text: str) -> QLabel:
    """A label that wraps its text and never widens the dock (a long path wraps too)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label

"""The Generate widget: a few GAN steps on the phantom, sampling, Stop, augmentation preview.

Synthetic layers stand beside the scan on its own slices (the slice slider keeps its range
and step), and quick refusals come before any worker starts (that torch and MONAI stay out
of napari's process: tests/qt/test_jobs_out_of_napari.py).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Layer

from napari_medai._napari.generation import augmentation_for
from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._napari.training import displayed_slice
from napari_medai._napari.writer import write_labels
from napari_medai._qt.generate_widget import GenerateWidget
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.train_widget import TrainWidget
from napari_medai.core.errors import MedaiError
from napari_medai.core.training.strengths import AugmentStrengths

TIMEOUT_MS = 120_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def scene(phantom, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "models"))
    volume, labels = phantom
    viewer = ViewerModel()
    image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
    annotation = viewer.add_layer(Layer.create(*labels_layer_data(labels, "organs")))
    return viewer, image, annotation


@pytest.fixture
def widget(qtbot, scene, monkeypatch):
    viewer, image, _ = scene
    generate = GenerateWidget(viewer)
    qtbot.addWidget(generate)
    generate.image.value = image
    generate.patch.value = 32
    tiny = generate.config

    def config():
        return replace(
            tiny(), max_iters=3, max_time_s=None, batch_size=4, quality_samples=16, quality_steps=5
        )

    monkeypatch.setattr(generate, "config", config)
    return generate


def run(qtbot, widget, button) -> None:
    assert button.enabled, button.tooltip
    button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)


def slice_axis(viewer) -> tuple[float, float, float]:
    """The slice slider's (start, stop, step)."""
    return tuple(viewer.dims.range[0])


def on_scan_slices(scan, layer, first: int) -> None:
    """Each slice of ``layer`` lies on a slice of ``scan`` from ``first`` on, beside its columns."""
    rows, height, width = layer.data.shape
    corners = np.array(
        [[z, y, x] for z in range(rows) for y in (0, height - 1) for x in (0, width - 1)]
    )
    in_scan = np.array([scan.world_to_data(layer.data_to_world(c)) for c in corners])
    # Nothing but float rounding (1e-6 voxel) separates the two grids.
    np.testing.assert_allclose(in_scan[:, 0], first + corners[:, 0], atol=1e-6)
    assert in_scan[:, 2].min() > scan.data.shape[-1] - 1


def test_train_sample_and_mark_synthetic(qtbot, scene, widget):
    viewer, image, annotation = scene
    source, painted = np.array(image.data, copy=True), np.array(annotation.data, copy=True)
    slider = slice_axis(viewer)
    assert not widget.sample_button.enabled and "Train a GAN" in widget.sample_button.tooltip
    run(qtbot, widget, widget.train_button)
    assert widget.runner.outcome is JobOutcome.DONE
    assert len(widget.plot.series("generator")) == 3
    assert widget.preview.pixmap() is not None and not widget.preview.pixmap().isNull()
    # Three steps leave the generator far from the phantom's patches: its MMD² is
    # about 20x that of Gaussian noise like them, a margin no CPU can cross.
    assert widget.status.text().startswith("Not yet useful: "), widget.status.text()
    assert "two-sample accuracy" in widget.status.text()

    widget.count.value = 4
    run(qtbot, widget, widget.sample_button)
    [samples] = widget.sample_layers
    assert samples.name.startswith("synthetic") and samples.data.shape == (4, 32, 32)
    assert samples.metadata["synthetic"] is True
    displayed = displayed_slice(viewer, image)
    on_scan_slices(image, samples, displayed - 2)
    assert slice_axis(viewer) == slider
    np.testing.assert_array_equal(image.data, source)
    np.testing.assert_array_equal(annotation.data, painted)
    assert len(viewer.layers) == 3

    widget.kind.value = "conditional"
    widget.labels.value = annotation
    run(qtbot, widget, widget.train_button)
    run(qtbot, widget, widget.sample_button)
    images, masks = widget.sample_layers
    assert len(viewer.layers) == 4  # the earlier samples gave way to these
    assert masks.name == f"{images.name} masks" and masks.data.shape == (4, 32, 32)
    assert masks.metadata["synthetic"] is True and masks.data.any()
    on_scan_slices(image, masks, displayed - 2)
    assert slice_axis(viewer) == slider
    data, meta, _ = masks.as_layer_data_tuple()
    with pytest.raises(MedaiError, match="synthetic samples"):
        write_labels("/nonexistent/synthetic_masks.nii.gz", data, meta)

    widget.labels.value = None
    assert not widget.sample_button.enabled
    assert "turns label maps into images: pick the Labels" in widget.sample_button.tooltip


def test_more_samples_than_slices_go_into_columns_on_the_scan_slices(qtbot, scene, widget):
    viewer, image, _ = scene
    slider = slice_axis(viewer)
    run(qtbot, widget, widget.train_button)
    widget.count.value = 30  # the phantom has 24 slices
    run(qtbot, widget, widget.sample_button)
    [samples] = widget.sample_layers
    assert samples.data.shape == (24, 32, 64)
    on_scan_slices(image, samples, 0)
    assert slice_axis(viewer) == slider
    assert "in 2 columns" in widget.status.text()


def test_stop_lands_within_a_second(qtbot, widget, monkeypatch):
    tiny = widget.config
    monkeypatch.setattr(widget, "config", lambda: replace(tiny(), max_iters=None, max_time_s=600))
    widget.train_button.changed.emit(True)
    qtbot.waitUntil(lambda: len(widget.plot.series("generator")) >= 2, timeout=TIMEOUT_MS)
    started = time.perf_counter()
    widget.runner.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=5000)
    took = time.perf_counter() - started
    assert took < 1.0, f"Stop took {took:.2f} s"
    assert widget.runner.outcome is JobOutcome.CANCELLED


def test_augmentation_preview_and_strengths_for_train(qtbot, scene, widget):
    viewer, image, _ = scene
    slider = slice_axis(viewer)
    widget.strengths["elastic"].value = 2.0
    widget.strengths["noise"].value = 0.0
    run(qtbot, widget, widget.augment_button)
    preview = viewer.layers["synthetic augmentation preview"]
    # Four augmented copies of the 64x64 displayed slice, as one 2x2 mosaic on that slice.
    assert preview.data.shape == (1, 128, 128) and preview.metadata["synthetic"] is True
    on_scan_slices(image, preview, displayed_slice(viewer, image))
    assert slice_axis(viewer) == slider
    widget.use_button.changed.emit(True)
    # The other strengths stay at the training defaults the dock started from (affine 0.5).
    chosen = AugmentStrengths(affine=0.5, elastic=2.0, intensity=1.0, noise=0.0)
    assert augmentation_for(viewer) == chosen
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    assert train.config(train.output_dir()).augmentation == chosen


def refused_at_once(widget, notifications, says: str) -> None:
    """Train refuses in the dock: no worker, a notification and status naming the problem."""
    started = time.perf_counter()
    widget.train_button.changed.emit(True)
    took = time.perf_counter() - started
    assert not widget.runner.running
    assert any(says in str(n.message) for n in notifications)
    assert says in widget.status.text()
    # The bound for a quick refusal; the checks read shapes and one array.
    assert took < 0.1, f"the refusal took {took * 1000:.0f} ms"


def test_image_smaller_than_the_patch_is_refused(qtbot, scene, widget, notifications):
    viewer, *_ = scene
    widget.patch.value = 80
    refused_at_once(widget, notifications, "smaller than the 80x80 patch")
    assert len(viewer.layers) == 2


def test_conditional_without_labels_is_refused(qtbot, scene, widget, notifications):
    widget.kind.value = "conditional"
    refused_at_once(widget, notifications, "a label-conditioned GAN needs labels")

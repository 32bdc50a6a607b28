"""The Generate widget: a few GAN steps on the phantom, sampling, Stop, augmentation preview."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Layer

from napari_medai._napari.generation import augmentation_for
from napari_medai._napari.layers import image_layer_data, labels_layer_data
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


def test_train_sample_and_mark_synthetic(qtbot, scene, widget):
    viewer, image, annotation = scene
    source, painted = np.array(image.data, copy=True), np.array(annotation.data, copy=True)
    assert not widget.sample_button.enabled and "Train a GAN" in widget.sample_button.tooltip
    run(qtbot, widget, widget.train_button)
    assert widget.runner.outcome is JobOutcome.DONE
    assert len(widget.plot.series("generator")) == 3
    assert widget.preview.pixmap() is not None and not widget.preview.pixmap().isNull()
    assert "two-sample accuracy" in widget.status.text()

    widget.count.value = 4
    run(qtbot, widget, widget.sample_button)
    [samples] = widget.sample_layers
    assert samples.name.startswith("synthetic") and samples.data.shape == (4, 32, 32)
    assert samples.metadata["synthetic"] is True
    assert tuple(samples.scale) == (1.0, 5.0, 5.0)
    np.testing.assert_array_equal(samples.affine.affine_matrix, np.eye(4))
    assert samples.extent.world[0][2] > image.extent.world[1][2]  # beside the scan
    np.testing.assert_array_equal(image.data, source)
    np.testing.assert_array_equal(annotation.data, painted)
    assert len(viewer.layers) == 3

    widget.kind.value = "conditional"
    widget.labels.value = annotation
    run(qtbot, widget, widget.train_button)
    run(qtbot, widget, widget.sample_button)
    images, masks = widget.sample_layers
    assert masks.name == f"{images.name} masks" and masks.data.shape == (4, 32, 32)
    assert masks.metadata["synthetic"] is True and masks.data.any()
    data, meta, _ = masks.as_layer_data_tuple()
    with pytest.raises(MedaiError, match="synthetic samples"):
        write_labels("/nonexistent/synthetic_masks.nii.gz", data, meta)


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
    widget.strengths["elastic"].value = 2.0
    widget.strengths["noise"].value = 0.0
    run(qtbot, widget, widget.augment_button)
    preview = viewer.layers["synthetic augmentation preview"]
    assert preview.data.shape == (8, 64, 64) and preview.metadata["synthetic"] is True
    widget.use_button.changed.emit(True)
    chosen = AugmentStrengths(affine=1.0, elastic=2.0, intensity=1.0, noise=0.0)
    assert augmentation_for(viewer) == chosen
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    assert train.config(train.output_dir()).augmentation == chosen


def test_image_smaller_than_the_patch_is_refused(qtbot, scene, widget, notifications):
    viewer, *_ = scene
    widget.patch.value = 80
    run(qtbot, widget, widget.train_button)
    assert widget.runner.outcome is JobOutcome.FAILED
    assert any("smaller than the 80x80 patch" in str(n.message) for n in notifications)
    assert len(viewer.layers) == 2

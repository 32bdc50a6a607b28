"""The Classify dock: boxes in, table + features + text + Grad-CAM out; Cancel and errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from napari.layers import Layer
from qtpy.QtCore import Qt

from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._qt.classify_widget import ClassifyWidget
from napari_medai._qt.job_runner import JobOutcome
from napari_medai.core import job_process
from napari_medai.core.errors import MedaiError
from napari_medai.core.models import sources
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_card(**changes) -> ModelCard:
    fields = {
        "name": "tiny",
        "architecture": "DenseNet",
        "architecture_args": {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]},
        "label_names": {0: "other", 1: "liver"},
        "patch_size": [1, 16, 16],
        "task": "classification",
        "spatial_dims": 2,
        "intensity": {"kind": "window", "low": -160, "high": 240},
    }
    return ModelCard(**{**fields, **changes})


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(0)
    card = tiny_card()
    return save_model_package(tmp_path_factory.mktemp("m") / "pkg", card, build_network(card))


@pytest.fixture
def dock(make_napari_viewer, phantom, package, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "listed"))
    viewer = make_napari_viewer()
    image = viewer.add_layer(Layer.create(*image_layer_data(phantom[0])))
    widget = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.pick_model(package)
    return viewer, image, widget


@pytest.fixture
def in_thread(monkeypatch):
    """Worker jobs in the test's process, so a monkeypatched load_model reaches them."""
    monkeypatch.setattr(job_process, "SEPARATE_PROCESS", False)


def draw_boxes(viewer, image, corners: list[tuple[int, int, int, int]], z: int = 12):
    """Rectangles drawn in world coordinates over voxel boxes (y0, x0, y1, x1) of slice z."""
    shapes = [
        np.array([image.data_to_world(p) for p in ([z, a, b], [z, a, d], [z, c, d], [z, c, b])])
        for a, b, c, d in corners
    ]
    return viewer.add_shapes(shapes, shape_type="rectangle", name="boxes")


def snapshot(viewer) -> list:
    """Name, data and features (where the layer has them) of every layer."""
    out = []
    for layer in viewer.layers:
        data = [np.array(d) for d in layer.data] if isinstance(layer.data, list) else layer.data
        features = layer.features.copy() if hasattr(layer, "features") else None
        out.append((layer.name, np.array(data, dtype=object), features))
    return out


def assert_unchanged(viewer, before) -> None:
    after = snapshot(viewer)
    assert [a[0] for a in after] == [b[0] for b in before]
    for (_, data_a, feat_a), (_, data_b, feat_b) in zip(after, before):
        assert all(np.array_equal(a, b) for a, b in zip(data_a, data_b))
        assert (feat_a is None and feat_b is None) or feat_a.equals(feat_b)


# 60 s: the first job of a test starts the worker, which imports torch (5-20 s on a busy
# machine) before it classifies a 24-slice phantom in well under a second.
def run_and_wait(qtbot, widget, timeout_ms: int = 60000) -> JobOutcome:
    assert widget.run_button.enabled, widget.run_button.tooltip
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout_ms)
    return widget.runner.outcome


def test_two_boxes_fill_table_features_text_and_cam(dock, qtbot):
    viewer, image, widget = dock
    boxes = draw_boxes(viewer, image, [(10, 10, 30, 30), (30, 30, 50, 50)])
    widget.scope.value = "boxes"
    widget.boxes.value = boxes
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE

    assert widget.table.rowCount() == 2
    assert list(boxes.features.columns[:2]) == ["class", "probability"]
    assert set(boxes.features["class"]) <= {"other", "liver"}
    assert boxes.text.string.format == "{class} {probability:.2f}"
    cam = widget.cam_layer
    assert cam is not None and cam in viewer.layers and cam.blending == "additive"
    np.testing.assert_allclose(cam.affine.affine_matrix, image.affine.affine_matrix)
    assert cam.data[:, :10].max() == 0 and cam.data[12, 10:30, 10:30].max() > 0
    count = len(viewer.layers)
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert len(viewer.layers) == count  # the CAM layer is updated, not added again


def test_every_slice_fills_the_curve_and_a_click_moves_the_viewer(dock, qtbot):
    viewer, image, widget = dock
    widget.cam.value = False
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert len(widget.curve.series("per-slice probability")) == 24
    assert widget.table.rowCount() == 24
    widget.curve.clicked.emit(5.0)
    slice_5 = image.world_to_data(viewer.dims.point)[0]
    assert round(slice_5) == 5


class Sleepy(torch.nn.Module):
    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        time.sleep(0.3)
        return self.inner(x)


def test_cancel_and_errors_leave_the_layers_untouched(
    in_thread, dock, qtbot, monkeypatch, notifications
):
    viewer, image, widget = dock
    boxes = draw_boxes(viewer, image, [(10, 10, 30, 30)])
    before = snapshot(viewer)
    sleepy = Sleepy(build_network(tiny_card()).eval())
    slow = LoadedModel(tiny_card(), sleepy, "sleepy", "")
    monkeypatch.setattr(sources, "load_model", lambda source, trusted=False: slow)
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "classified" in widget.runner.message, timeout=10000)
    started = time.perf_counter()
    qtbot.mouseClick(widget.runner.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=1500)
    assert time.perf_counter() - started < 1.0
    assert widget.runner.outcome == JobOutcome.CANCELLED and sleepy.calls < 24
    assert_unchanged(viewer, before)

    segmenter = LoadedModel(tiny_card(task="segmentation"), sleepy.inner, "seg", "")
    monkeypatch.setattr(sources, "load_model", lambda source, trusted=False: segmenter)
    widget.scope.value = "boxes"
    widget.boxes.value = boxes
    assert run_and_wait(qtbot, widget) == JobOutcome.FAILED
    assert "not a classifier" in str(notifications[-1].message)
    assert_unchanged(viewer, before)

    boxes.data = []
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    assert "holds no boxes" in str(notifications[-1].message)
    assert not widget.runner.running
    widget.boxes.value = None
    assert not widget.run_button.enabled and "Shapes layer" in widget.run_button.tooltip


def test_train_on_box_classes_then_run_the_new_model(dock, qtbot, monkeypatch, tmp_path):
    viewer, image, widget = dock
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    corners = [(10 + 4 * (z % 2), 10, 26 + 4 * (z % 2), 26) for z in range(8)]
    shapes = [
        np.array([image.data_to_world(p) for p in ([z, a, b], [z, a, d], [z, c, d], [z, c, b])])
        for z, (a, b, c, d) in enumerate(corners, start=4)
    ]
    boxes = viewer.add_shapes(shapes, shape_type="rectangle", name="examples")
    boxes.features = {"class": ["liver", "other"] * 4}
    widget.boxes.value = boxes
    widget.train_time.value = 1
    widget.evaluation.slices.value = "10-11"  # Train leaves them out, Evaluate scores them
    assert widget.train_button.enabled
    qtbot.mouseClick(widget.train_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60000)
    assert widget.runner.outcome == JobOutcome.DONE
    assert widget.model_path().startswith(str(tmp_path))
    assert "held-out accuracy" in widget.status.value and "boxes" in widget.status.value
    card = ModelCard.read(Path(widget.model_path()) / "card.json")
    # Six boxes off slices 10-11: slices 8-9 validate, 4-7 train.
    assert card.training["examples"] == {"liver": 2, "other": 2}
    assert "slice positions 8-9 held out" in card.training["held_out"]
    assert evaluate_and_wait(qtbot, widget) == JobOutcome.DONE
    assert widget.metrics.metrics["computed_on"]["per_class"] == {"liver": 1, "other": 1}
    assert "boxes on slices 10-11" in widget.metrics.computed_on.text()

    widget.scope.value = "boxes"
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert boxes.features["class"].tolist() == ["liver", "other"] * 4
    assert set(boxes.features["predicted"]) <= {"liver", "other"}
    assert widget.metrics.figures.rowCount() == 3  # liver, other, macro
    assert widget.training.series("loss")


def train_on_spleen_slices(viewer, phantom, widget, seconds: int):
    """Pick slices labelled by the phantom's labels (spleen = 2) and press Train."""
    labels = viewer.add_layer(Layer.create(*labels_layer_data(phantom[1])))
    widget.source.value = widget.source.choices[1]
    widget.labels.value = labels
    widget.values.value = "2"
    widget.train_time.value = seconds
    assert widget.train_button.enabled, widget.train_button.tooltip
    widget.train_button.native.click()


def test_train_on_labelled_slices_shows_and_saves_the_held_out_metrics(
    dock, qtbot, monkeypatch, tmp_path, phantom
):
    viewer, _image, widget = dock
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    assert not widget.metrics.save_button.isEnabled()
    train_on_spleen_slices(viewer, phantom, widget, seconds=2)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60000)
    assert widget.runner.outcome == JobOutcome.DONE

    metrics = widget.metrics.metrics
    assert metrics is not None and set(metrics["per_class"]) == {"no spleen", "spleen"}
    held_out = metrics["computed_on"]["cases"]
    assert f"Computed on {held_out} held-out cases" in widget.metrics.computed_on.text()
    assert "slice positions" in widget.metrics.computed_on.text()
    figures = widget.metrics.figures
    assert figures.rowCount() == 3 and figures.item(2, 0).text() == "macro"
    assert figures.item(2, 4).text() == f"{metrics['macro']['roc_auc']:.3f}"
    confusion = widget.metrics.confusion
    assert (confusion.rowCount(), confusion.columnCount()) == (2, 2)
    assert sum(int(confusion.item(r, c).text()) for r in range(2) for c in range(2)) == held_out
    assert widget.metrics.roc.series("chance") == [(0.0, 0.0), (1.0, 1.0)]
    roc = widget.metrics.roc.series("spleen")
    assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)
    assert len(widget.training.series("loss")) > 1

    paths = widget.metrics.save(tmp_path / "spleen-metrics")
    assert [p.name for p in paths] == ["spleen-metrics.json", "spleen-metrics.csv"]
    assert json.loads(paths[0].read_text())["accuracy"] == metrics["accuracy"]
    assert "true \\ predicted" in paths[1].read_text()

    widget.evaluation.slices.value = "12-23"  # the just-trained model, on slices the user picks
    widget.evaluation.button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=20000)
    assert widget.metrics.metrics["computed_on"]["cases"] == 12
    assert "slices 12-23 along z (label 2 = spleen)" in widget.metrics.computed_on.text()


def test_stop_training_lands_within_a_second(dock, qtbot, monkeypatch, tmp_path, phantom):
    viewer, _image, widget = dock
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    train_on_spleen_slices(viewer, phantom, widget, seconds=120)
    qtbot.waitUntil(lambda: len(widget.training.series("loss")) >= 2, timeout=30000)
    started = time.perf_counter()
    widget.runner.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=3000)
    assert time.perf_counter() - started < 1.0
    assert widget.runner.outcome == JobOutcome.CANCELLED


def test_bad_label_values_are_refused_before_training(dock, notifications, phantom, qtbot):
    viewer, _image, widget = dock
    labels = viewer.add_labels(np.zeros_like(phantom[1].array), name="empty")
    widget.source.value = widget.source.choices[1]
    widget.labels.value = labels
    widget.train_button.native.click()
    assert "holds no labels" in str(notifications[-1].message)
    labels.data = phantom[1].array
    widget.values.value = "2, liver"
    widget.train_button.native.click()
    assert "whole numbers" in str(notifications[-1].message)
    widget.values.value = "9"
    widget.train_button.native.click()
    assert "holds no label 9" in str(notifications[-1].message)
    assert not widget.runner.running and widget.metrics.metrics is None
    widget.labels.value = None
    assert not widget.train_button.enabled and "Labels layer" in widget.train_button.tooltip
    widget.labels.value = labels
    widget.values.value = "2"
    widget.evaluation.slices.value = "0-23"
    widget.train_button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=10000)
    assert "every slice is held out" in str(notifications[-1].message)


def evaluate_and_wait(qtbot, widget, timeout_ms: int = 60000) -> JobOutcome:
    button = widget.evaluation.button
    assert button.enabled, button.tooltip
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout_ms)
    return widget.runner.outcome


def test_evaluate_on_picked_slices_and_points_fills_the_metrics(dock, qtbot, phantom):
    viewer, image, widget = dock
    labels = viewer.add_layer(Layer.create(*labels_layer_data(phantom[1])))
    labels.name = "organs"
    widget.source.value = widget.source.choices[1]
    widget.labels.value = labels
    widget.values.value = "1"
    widget.evaluation.slices.value = "5-15"
    before = snapshot(viewer)
    assert evaluate_and_wait(qtbot, widget) == JobOutcome.DONE
    assert_unchanged(viewer, before)
    metrics = widget.metrics.metrics
    on = metrics["computed_on"]
    assert on["cases"] == 11 and on["per_class"] == {"other": 3, "liver": 8}
    text = widget.metrics.computed_on.text()
    assert "Model 'tiny' scored on 11 held-out cases (3 other, 8 liver)" in text
    assert f"layer 'organs' slices 5-15 along z (label 1 = liver) of image '{image.name}'" in text
    assert widget.metrics.figures.rowCount() == 3 and widget.metrics.save_button.isEnabled()
    assert "on 11 picked slices" in widget.status.value

    z = [4, 6, 10, 12]
    points = viewer.add_points([image.data_to_world([k, 32, 32]) for k in z], name="rois")
    points.features = {"class": ["other", "liver", "other", "liver"]}
    widget.source.value = widget.source.choices[0]
    widget.points.value = points
    widget.box_size.value = 16
    widget.evaluation.slices.value = ""
    assert evaluate_and_wait(qtbot, widget) == JobOutcome.DONE
    text = widget.metrics.computed_on.text()
    assert "4 held-out cases" in text and "layer 'rois' boxes on slices 4, 6, 10, 12" in text
    assert widget.metrics.confusion.rowCount() == 2


def test_evaluate_cancel_and_errors_keep_layers_and_metrics(
    in_thread, dock, qtbot, monkeypatch, phantom, notifications
):
    viewer, _image, widget = dock
    labels = viewer.add_layer(Layer.create(*labels_layer_data(phantom[1])))
    widget.source.value = widget.source.choices[1]
    widget.labels.value = labels
    widget.values.value = "1"
    before = snapshot(viewer)
    sleepy = Sleepy(build_network(tiny_card()).eval())
    slow = LoadedModel(tiny_card(), sleepy, "sleepy", "")
    monkeypatch.setattr(sources, "load_model", lambda source, trusted=False: slow)
    widget.evaluation.button.native.click()
    qtbot.waitUntil(lambda: "scored" in widget.runner.message, timeout=10000)
    widget.runner.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=1500)
    assert widget.runner.outcome == JobOutcome.CANCELLED and sleepy.calls < 6
    assert widget.metrics.metrics is None
    assert_unchanged(viewer, before)

    segmenter = LoadedModel(tiny_card(task="segmentation"), sleepy.inner, "seg", "")
    monkeypatch.setattr(sources, "load_model", lambda source, trusted=False: segmenter)
    assert evaluate_and_wait(qtbot, widget) == JobOutcome.FAILED
    assert "not a classifier" in str(notifications[-1].message)
    monkeypatch.undo()
    widget.evaluation.slices.value = "0-7"
    assert evaluate_and_wait(qtbot, widget) == JobOutcome.FAILED
    assert "no example of class 'liver'" in str(notifications[-1].message)
    widget.evaluation.slices.value = "7-"
    widget.evaluation.button.native.click()
    assert "Evaluate failed: slices must be given as" in str(notifications[-1].message)
    assert not widget.runner.running and widget.metrics.metrics is None
    assert_unchanged(viewer, before)
    widget.labels.value = None
    assert not widget.evaluation.button.enabled
    assert "choose a Labels layer" in widget.evaluation.button.tooltip
    fresh = ClassifyWidget(viewer)
    fresh.source.value = fresh.source.choices[1]
    fresh.labels.value = labels
    assert not fresh.evaluation.button.enabled
    assert "choose a classifier model" in fresh.evaluation.button.tooltip


def test_the_roc_legend_drops_the_classes_of_an_earlier_model(qtbot):
    from napari_medai._qt.classify_results import MetricsView
    from napari_medai.core.classification.metrics import classification_metrics

    view = MetricsView()
    qtbot.addWidget(view)
    scores = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    view.show_metrics(classification_metrics([0, 1, 1], scores, {0: "a", 1: "b"}, "first"))
    view.show_metrics(classification_metrics([0, 1, 1], scores, {0: "c", 1: "d"}, "second"))
    legend = [s.label for s in view.roc._series.values() if s.label]  # what the legend lists
    assert legend == ["chance", "c (AUC 1.000)", "d (AUC 1.000)"]
    assert view.roc.series("a") == [] and len(view.roc.series("d")) == 4


def test_a_held_out_split_without_the_class_says_so_instead_of_accuracy(
    dock, qtbot, monkeypatch, tmp_path, phantom
):
    """The right kidney (label 3) lies on slices 2-13; 3-13 are held out for Evaluate.

    Training keeps slice 2 as its only kidney slice, so no block of neighbouring
    slices can hold the kidney and leave it to train on: the split holds out 20-23.
    """
    viewer, _image, widget = dock
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    labels = viewer.add_layer(Layer.create(*labels_layer_data(phantom[1])))
    widget.source.value = widget.source.choices[1]
    widget.labels.value = labels
    widget.values.value = "3"
    widget.evaluation.slices.value = "3-13"
    widget.train_time.value = 1
    widget.train_button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60000)
    assert widget.runner.outcome == JobOutcome.DONE
    assert "held-out accuracy" not in widget.status.value
    assert "hold no 'kidney_right' example" in widget.status.value
    assert "kept the last weights" in widget.status.value
    metrics = widget.metrics.metrics
    assert set(metrics["per_class"]) == {"no kidney_right", "kidney_right"}
    text = widget.metrics.computed_on.text()
    assert "Accuracy" not in text and "cannot judge the classifier" in text
    auc = widget.metrics.figures.item(1, 4)  # kidney_right's ROC AUC
    assert auc.text() == "n/a" and "cannot be computed" in auc.toolTip()


def test_typed_label_names_name_the_classes(make_napari_viewer, phantom):
    from napari_medai._napari.classification import named_label_map

    viewer = make_napari_viewer()
    labels = viewer.add_labels(phantom[1].array, name="painted")  # no names of its own
    assert named_label_map(labels, "2").label_names == {}
    assert named_label_map(labels, "2=kidney").label_names == {2: "kidney"}
    with pytest.raises(MedaiError, match="'2=kidney'"):
        named_label_map(labels, "2=")


def test_the_model_picker_lists_only_classifiers(dock, tmp_path, monkeypatch):
    _viewer, _image, widget = dock
    listed = tmp_path / "models"
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(listed))
    torch.manual_seed(0)
    for card in (
        tiny_card(name="kidney finder"),
        tiny_card(name="organ masks", task="segmentation"),
    ):
        save_model_package(listed / card.name.replace(" ", "-"), card, build_network(card))
    widget.models.refresh()
    titles = [widget.model.native.itemText(i) for i in range(widget.model.native.count())]
    assert any(t.startswith("kidney finder") for t in titles)
    assert not any(t.startswith("organ masks") for t in titles)
    widget.pick_model(listed / "kidney-finder")
    assert widget.cam_class.choices == ("predicted class", "other", "liver")
    widget.cam_class.value = "liver"
    assert widget.config().cam_class == 1

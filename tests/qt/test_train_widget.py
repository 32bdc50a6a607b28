"""The Train dock: annotate, train, predict, jump to uncertain slices, accept corrections."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from model_cards import card_only_package
from napari.components import ViewerModel
from napari.layers import Labels, Layer
from napari.utils.notifications import NotificationSeverity
from qtpy.QtCore import Qt

from napari_medai._napari.layers import (
    image_layer_data,
    labels_layer_data,
    layer_geometry,
    volume_from_layer,
)
from napari_medai._napari.prompting import show_preview
from napari_medai._napari.training import (
    PREDICTION_SUFFIX,
    Review,
    displayed_slice,
    go_to_slice,
    parse_label_names,
    show_prediction,
    training_pair,
)
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.segment_widget import SegmentWidget
from napari_medai._qt.train_widget import TrainWidget
from napari_medai.core.errors import MedaiError
from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import run_job
from napari_medai.core.models.formats import is_model_package
from napari_medai.core.models.registry import drafts_dir, list_models
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.training.config import training_threads
from napari_medai.core.volume import LabelMap

LIVER = 1
#: Bounds a hang, not a speed: the first Train starts the worker process, which imports
#: torch below napari's priority; at load 13 on 2 cores that alone took over 60 s.
TRAIN_TIMEOUT_MS = 180_000


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """The user model folder, redirected into the test's temporary folder."""
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(folder))
    return folder


def add_volume(viewer, volume) -> Layer:
    return viewer.add_layer(Layer.create(*image_layer_data(volume)))


def add_labels(viewer, array: np.ndarray, geometry: Geometry, name: str) -> Labels:
    return viewer.add_layer(Layer.create(*labels_layer_data(LabelMap(array, geometry), name)))


def liver_slices(truth: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices spread over the liver's extent."""
    present = np.nonzero((truth == LIVER).any(axis=(1, 2)))[0]
    return [int(present[len(present) * (i + 1) // (count + 1)]) for i in range(count)]


@pytest.fixture
def viewer(request):
    """A viewer model (layers and dims: all the widget uses); a napari window if asked.

    Tests ask for the window with ``parametrize("viewer", ["window"], indirect=True)``.
    """
    if getattr(request, "param", None) == "window":
        return request.getfixturevalue("make_napari_viewer")()
    return ViewerModel()


@pytest.fixture
def scene(viewer, phantom, models_dir):
    """A viewer with the phantom CT and a labels layer with two painted liver slices."""
    volume, truth = phantom
    image = add_volume(viewer, volume)
    annotation = add_labels(
        viewer, np.zeros(truth.array.shape, np.uint8), volume.geometry, "annotation"
    )
    for z in liver_slices(truth.array, 2):
        annotation.data[z] = (truth.array[z] == LIVER).astype(np.uint8)
    annotation.refresh()
    return viewer, image, annotation


@pytest.fixture
def widget(qtbot, scene):
    viewer, image, annotation = scene
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    row = train.pair_rows[0]
    row.image_combo.value = image
    row.labels_combo.value = annotation
    return train


def wait_idle(qtbot, widget: TrainWidget, timeout_ms: int = TRAIN_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout_ms)


def click(qtbot, button) -> None:
    button = getattr(button, "native", button)
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


@pytest.mark.parametrize("viewer", ["window"], indirect=True)
def test_the_whole_loop_on_the_phantom(qtbot, scene, widget, models_dir):
    viewer, image, annotation = scene
    painted = np.array(annotation.data, copy=True)
    assert not widget.predict_button.enabled
    widget.time_spin.value = 3
    click(qtbot, widget.train_button)
    assert widget.runner.running and not widget.train_button.enabled
    wait_idle(qtbot, widget)

    assert widget.runner.outcome is JobOutcome.DONE
    result = widget.last_result
    # A model good enough joins the list at once; one that is not waits for Keep.
    if not result.quality.ready:
        assert widget.last_model == result.best_path
        assert widget.last_model.parent == models_dir / "drafts"
        click(qtbot, widget.keep_button)
    assert widget.last_model.parent == models_dir
    assert widget.last_model.name == result.best_path.name
    assert is_model_package(widget.last_model)
    # The plot got every step the trainer recorded, and drew it.
    history = result.history
    assert widget.plot.series("loss") == [(h["iteration"], h["loss"]) for h in history]
    dice_in_history = [(h["iteration"], h["val_dice"]) for h in history if "val_dice" in h]
    assert widget.plot.series("dice") == dice_in_history  # the last one, after the last step, too
    widget.native.show()  # the plot paints when shown, scrolled into view in the dock
    widget.form.root_native_widget.ensureWidgetVisible(widget.plot)
    qtbot.waitUntil(lambda: widget.plot.redraws > 0, timeout=2000)
    np.testing.assert_array_equal(annotation.data, painted)

    click(qtbot, widget.predict_button)
    wait_idle(qtbot, widget)
    assert widget.runner.outcome is JobOutcome.DONE
    prediction = viewer.layers[image.name + PREDICTION_SUFFIX]
    assert isinstance(prediction, Labels)
    details = widget.details.text()
    assert f"Model: {result.card.name}" in details and "Volumes: " in details
    assert prediction.data.shape == image.data.shape
    assert layer_geometry(prediction).is_close(layer_geometry(image))
    np.testing.assert_allclose(prediction.affine.affine_matrix, image.affine.affine_matrix)
    np.testing.assert_array_equal(annotation.data, painted)

    # One click shows the most uncertain unpainted slice, the next click the runner-up;
    # the truth is the model's own uncertainty map, computed here once more.
    model = load_model(widget.last_model)
    volume = volume_from_layer(image)
    uncertainty = run_job(segment_job(volume, model, SegmentConfig(uncertainty=True))).uncertainty
    scores = uncertainty.array.mean(axis=(1, 2))
    unpainted = [z for z in range(len(scores)) if not painted[z].any()]
    expected = sorted(unpainted, key=lambda z: -scores[z])
    assert widget.review.ranking == expected
    for z in expected[:2]:
        click(qtbot, widget.next_slice_button)
        centre = [z, (image.data.shape[1] - 1) / 2, (image.data.shape[2] - 1) / 2]
        assert viewer.dims.point[0] == pytest.approx(image.data_to_world(centre)[0])
        assert displayed_slice(viewer, image) == z

    # Correct one unannotated slice of the prediction, accept: it lands in the labels.
    z = next(z for z in range(image.data.shape[0]) if not painted[z].any())
    prediction.data[z, 10:20, 10:20] = LIVER
    prediction.data[z, 30:, :] = 0
    prediction.refresh()
    click(qtbot, widget.accept_button)
    np.testing.assert_array_equal(annotation.data[z], prediction.data[z])
    others = np.arange(image.data.shape[0]) != z
    np.testing.assert_array_equal(annotation.data[others], painted[others])


def test_stop_ends_training_within_a_second_and_keeps_the_best_model(qtbot, scene, widget):
    _viewer, _image, annotation = scene
    painted = np.array(annotation.data, copy=True)
    widget.time_spin.value = 0  # no budget: trains until stopped
    click(qtbot, widget.train_button)
    qtbot.waitUntil(lambda: len(widget.plot.series("loss")) >= 2, timeout=TRAIN_TIMEOUT_MS)
    started = time.perf_counter()
    click(qtbot, widget.stop_button)
    wait_idle(qtbot, widget, timeout_ms=5000)
    took = time.perf_counter() - started

    assert took < 1.0, f"Stop took {took:.2f} s"
    assert widget.runner.outcome is JobOutcome.CANCELLED
    assert widget.last_result is None
    model = load_model(widget.last_model)
    assert model.card.num_classes == 2
    assert widget.predict_button.enabled
    assert "Stopped" in widget.status.text()
    np.testing.assert_array_equal(annotation.data, painted)


def test_settings_become_the_train_config(qtbot, widget, models_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    widget.dimensionality_combo.value = "3d"
    widget.time_spin.value = 0
    widget.iterations_spin.value = 25
    config = widget.config(widget.output_dir())
    assert config.dimensionality == "3d"
    assert config.max_time_s is None and config.max_iters == 25
    assert config.init is None
    assert widget.threads_combo.value == 0  # auto
    assert config.num_threads == training_threads() >= 1
    assert config.out_dir.parent == models_dir / "drafts" and not config.out_dir.exists()
    assert config.name is None
    widget.threads_combo.value = 1
    assert widget.config(widget.output_dir()).num_threads == 1
    widget.name_edit.value = "Liver v2"
    config = widget.config(widget.output_dir())
    assert config.name == "Liver v2" and config.out_dir.name == "liver-v2"

    widget.output_edit.value = str(tmp_path / "mine")
    widget.set_start_model(tmp_path / "start")
    config = widget.config(widget.output_dir())
    assert config.out_dir == tmp_path / "mine"
    assert config.init == tmp_path / "start"
    widget.set_start_model(None)
    assert widget.start_model() is None


def test_cpu_threads_say_what_auto_means(qtbot, widget, monkeypatch):
    combo = widget.threads_combo.native
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    idle = training_threads()
    widget.reset_choices()  # as napari does when a layer changes
    assert widget.threads_combo.value == 0 and combo.currentText() == f"auto ({idle})"
    assert combo.itemText(combo.count() - 1) == str(os.cpu_count())

    # Free cores are read again when training starts, and the text follows.
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    assert widget.config(widget.output_dir()).num_threads == 1
    assert widget.threads_combo.value == 0 and combo.currentText() == "auto (1)"

    widget.threads_combo.value = 1
    assert combo.currentText() == "1"
    assert widget.config(widget.output_dir()).num_threads == 1


def test_pairs_follow_the_layers(qtbot, scene, widget, phantom):
    viewer, image, annotation = scene
    volume, truth = phantom
    second_image = add_volume(viewer, volume)
    second_image.name = "second CT"
    second_labels = add_labels(viewer, truth.array.copy(), volume.geometry, "second labels")
    widget.add_pair(second_image, second_labels)
    assert widget.selected_pairs() == [(image, annotation), (second_image, second_labels)]
    assert widget.train_button.enabled

    second_labels.name = "renamed"
    assert widget.pair_rows[1].labels_combo.current_choice == "renamed"
    viewer.layers.remove(second_labels)
    assert widget.pair_rows[1].pair() is None
    assert not widget.train_button.enabled
    assert "Pick an image and the labels" in widget.train_button.tooltip
    widget.pair_rows[1].remove_button.native.click()
    assert len(widget.pair_rows) == 1 and widget.train_button.enabled


def test_labels_off_the_image_grid_are_refused_and_left_alone(qtbot, scene, notifications):
    viewer, image, _annotation = scene
    other = add_labels(
        viewer, np.ones((5, 8, 8), np.uint8), Geometry(spacing=(2.0, 2.0, 2.0)), "elsewhere"
    )
    before = np.array(other.data, copy=True)
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    train.pair_rows[0].image_combo.value = image
    train.pair_rows[0].labels_combo.value = other
    train.time_spin.value = 2
    click(qtbot, train.train_button)

    assert train.runner.outcome is None  # refused in the dock: no worker ever started
    errors = [n.message for n in notifications if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "not on the image's grid" in errors[0]
    assert train.last_model is None and not train.predict_button.enabled
    assert train.status.text() == f"Train failed: {errors[0].removeprefix('Train failed: ')}"
    np.testing.assert_array_equal(other.data, before)


def test_training_pair_is_a_snapshot(scene):
    _viewer, image, annotation = scene
    volume, labels = training_pair(image, annotation)
    assert labels.geometry.is_close(volume.geometry)
    np.testing.assert_array_equal(labels.array, annotation.data)
    labels.array[:] = 7
    assert not (annotation.data == 7).any()


# Review helpers, on hand-made layers (no training needed) ---------------------------


@pytest.fixture
def review(scene):
    """A prediction (the phantom's organs) under review against the sparse annotation."""
    viewer, image, annotation = scene
    truth_like = np.zeros(annotation.data.shape, np.uint8)
    truth_like[:, 20:40, 20:40] = LIVER
    predicted = LabelMap(truth_like, layer_geometry(image))
    layer = show_prediction(viewer, image, predicted)
    return Review(image, annotation, layer, np.array(layer.data, copy=True))


def test_a_second_prediction_updates_the_same_layer(scene, review):
    viewer, image, _annotation = scene
    review.prediction.name = "my name for it"
    review.prediction.opacity = 0.3
    new = np.zeros(image.data.shape, np.uint8)
    new[3] = LIVER
    layer = show_prediction(viewer, image, LabelMap(new, layer_geometry(image)))
    assert layer is review.prediction and layer.opacity == 0.3
    np.testing.assert_array_equal(layer.data, new)
    assert sum(isinstance(each, Labels) for each in viewer.layers) == 2


def test_accept_copies_edited_planes_whole_and_only_those(review):
    annotation, prediction = review.annotation, review.prediction
    painted = np.array(annotation.data, copy=True)
    assert review.accept_corrections() == {"z": 0, "y": 0, "x": 0}
    np.testing.assert_array_equal(annotation.data, painted)

    # An axial stroke on slice 4, and a coronal one on row 50 across slices 2..9.
    prediction.data[4, 25:30, 25:30] = 0
    prediction.data[2:10, 50, 5:15] = LIVER
    expected = painted.copy()
    expected[4] = prediction.data[4]
    expected[:, 50, :] = prediction.data[:, 50, :]
    assert review.accept_corrections() == {"z": 1, "y": 1, "x": 0}
    np.testing.assert_array_equal(annotation.data, expected)

    # Accepted planes are the new baseline; undo in napari restores the labels.
    assert review.accept_corrections() == {"z": 0, "y": 0, "x": 0}
    annotation.undo()
    np.testing.assert_array_equal(annotation.data, painted)


def test_accept_shown_slice_copies_it_as_predicted(qtbot, scene, review, widget):
    viewer, image, annotation = scene
    widget.review = review
    painted = np.array(annotation.data, copy=True)
    go_to_slice(viewer, image, 6)
    assert widget.accept_shown_slice() == 6
    expected = painted.copy()
    expected[6] = review.prediction.data[6]
    np.testing.assert_array_equal(annotation.data, expected)


def test_go_to_slice_honours_the_oblique_grid(viewer, phantom):
    volume, _truth = phantom
    image = add_volume(viewer, volume)
    for z in (0, 5, volume.array.shape[0] - 1):
        position = go_to_slice(viewer, image, z)
        centre = np.array([z, *(np.array(volume.array.shape[1:]) - 1) / 2])
        assert position == pytest.approx(volume.geometry.index_to_world(centre)[0, 0])
        assert displayed_slice(viewer, image) == z


# Naming, judging and keeping models (packages written by hand: no training needed) ---


def draft_package(
    models_dir, name: str, val_dice: float, label_voxels: int, held_out: int | None = None
):
    """A trained-model folder among the drafts, as the trainer leaves it.

    ``held_out`` painted slices were kept out of training (0: none, the Dice is a fit;
    None: a card from before the trainer counted them).
    """
    training = {
        "val_dice": val_dice,
        "val_held_out": held_out != 0,
        **({} if held_out is None else {"val_slices": held_out}),
        "dimensionality": "2.5d",
        "iterations": 40,
        "training_time_s": 3.0,
        "data": [{"annotated_voxels": 8192, "label_voxels": {"1": label_voxels},
                  "painted_slices": {"z": 2, "y": 0, "x": 0}}],
    }  # fmt: skip
    return card_only_package(drafts_dir() / name, name=name, modality="CT", training=training)


def listed_names() -> list[str]:
    return [entry.name for entry in list_models()]


def test_a_junk_model_is_reported_plainly_and_listed_only_when_kept(qtbot, widget, models_dir):
    draft = draft_package(models_dir, "liver", val_dice=0.002, label_voxels=600)
    widget._training_finished(draft, JobOutcome.DONE)

    status = widget.status.text()
    assert "validation Dice 0.002: paint more slices" in status and "Trained: best" not in status
    assert "liver" not in listed_names()
    assert not widget.keep_button.native.isHidden() and widget.last_model == draft
    assert "Validation Dice: 0.002 on " in widget.details.text()
    assert "held out from training" in widget.details.text()

    click(qtbot, widget.keep_button)
    assert widget.last_model == models_dir / "liver" and not draft.exists()
    [entry] = [e for e in list_models() if e.name == "liver"]
    assert entry.title == "liver" and entry.labels == ("liver",) and entry.modality == "CT"
    assert entry.summary.startswith("liver · liver · CT · ") and entry.summary.endswith("Dice 0.00")
    assert widget.keep_button.native.isHidden()
    fit = draft_package(models_dir, "spleen", val_dice=0.002, label_voxels=600, held_out=0)
    widget._training_finished(fit, JobOutcome.DONE)
    details = widget.details.text()  # nothing was held out: never called a validation
    assert "Dice fit on the painted slices: 0.002" in details and "Validation" not in details


def test_too_few_painted_voxels_is_reported(widget, models_dir):
    draft = draft_package(models_dir, "speck", val_dice=0.95, label_voxels=12)
    widget._training_finished(draft, JobOutcome.DONE)
    assert "only 12 voxels were painted with a label" in widget.status.text()
    assert "speck" not in listed_names()


def test_a_good_model_joins_the_list_under_its_name(widget, models_dir):
    draft_package(models_dir, "liver", val_dice=0.91, label_voxels=900)
    (models_dir / "liver").mkdir()  # a model of that name exists: never replaced
    widget._training_finished(drafts_dir() / "liver", JobOutcome.DONE)
    assert widget.last_model == models_dir / "liver-2"
    status = widget.status.text()
    assert "validation Dice 0.910 on painted slices held out from training, in the model" in status
    assert "liver-2" in listed_names() and widget.keep_button.native.isHidden()


def test_a_dice_on_the_slices_trained_on_is_named_a_fit_not_a_validation(widget, models_dir):
    draft_package(models_dir, "liver", val_dice=0.967, label_voxels=900, held_out=0)
    widget._training_finished(drafts_dir() / "liver", JobOutcome.DONE)
    status = widget.status.text()
    assert "Dice 0.967 fit on the painted slices (too few painted slices to hold" in status
    assert "validation" not in status

    draft_package(models_dir, "spleen", val_dice=0.812, label_voxels=900, held_out=3)
    widget._training_finished(drafts_dir() / "spleen", JobOutcome.DONE)
    assert "validation Dice 0.812 on 3 painted slices held out from training" in (
        widget.status.text()
    )


def test_typed_label_names_reach_the_training_pair(scene):
    _viewer, image, annotation = scene
    assert parse_label_names("liver") == {1: "liver"}
    assert parse_label_names("liver, spleen") == {1: "liver", 2: "spleen"}
    assert parse_label_names("1: liver, 3: kidney") == {1: "liver", 3: "kidney"}
    with pytest.raises(MedaiError, match="should look like"):
        parse_label_names("one: liver")
    _volume, labels = training_pair(image, annotation, {1: "liver"})
    assert labels.label_names[1] == "liver"


def test_pickers_take_layers_opened_after_the_dock(qtbot, phantom):
    viewer = ViewerModel()
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    assert not train.train_button.enabled and "Pick an image" in train.train_button.tooltip
    volume, truth = phantom
    image = add_volume(viewer, volume)
    labels = add_labels(viewer, truth.array.copy(), volume.geometry, "organs")
    assert train.selected_pairs() == [(image, labels)] and train.train_button.enabled


# Start from: listed models by their titles, and the modality warning --------------------


def listed_package(models_dir, name: str, modality: str | None, task: str = "segmentation"):
    """A listed model package (its card is all a picker reads)."""
    folder = models_dir / name.lower().replace(" ", "-")
    return card_only_package(folder, name=name, task=task, modality=modality)


def start_texts(widget: TrainWidget) -> list[str]:
    combo = widget.start_combo.native
    return [combo.itemText(index) for index in range(combo.count())]


def test_start_from_lists_segmentation_models_as_every_picker_does(qtbot, widget, models_dir):
    liver = listed_package(models_dir, "Liver MR", "MR")
    listed_package(models_dir, "Organ classifier", "CT", task="classification")
    combo = widget.start_combo.native
    qtbot.mouseClick(combo, Qt.MouseButton.LeftButton)  # opening the list re-reads it
    combo.hidePopup()
    [entry] = [e for e in list_models() if e.location == liver]
    segment = SegmentWidget(widget._viewer)
    qtbot.addWidget(segment.native)
    picker = segment.models.combo.native
    assert entry.summary in [picker.itemText(index) for index in range(picker.count())]
    assert start_texts(widget) == ["New model", entry.summary, "Model folder..."]

    widget.start_combo.native.setCurrentText(entry.summary)
    assert widget.config(widget.output_dir()).init == liver
    draft_package(models_dir, "draft", val_dice=0.002, label_voxels=600)
    widget._training_finished(drafts_dir() / "draft", JobOutcome.DONE)  # not ready: a draft
    assert start_texts(widget)[1] == "Last trained model"
    assert widget.start_model() == liver  # the pick stays


@pytest.mark.parametrize("viewer", ["window"], indirect=True)
def test_fine_tuning_a_model_made_for_another_modality_is_warned_about(
    qtbot, widget, models_dir, notifications, monkeypatch
):
    listed_package(models_dir, "Liver MR", "MR")
    ct_model = listed_package(models_dir, "Liver CT", "CT")
    widget.reset_start_choices()
    assert widget.fit_warning.isHidden()
    [mr_text] = [text for text in start_texts(widget) if text.startswith("Liver MR")]
    widget.start_combo.native.setCurrentText(mr_text)
    expected = "'Liver MR' is made for MRI scans, but this image is CT"
    assert not widget.fit_warning.isHidden() and expected in widget.fit_warning.text()

    started = []
    monkeypatch.setattr(widget.runner, "start", lambda *args, **kwargs: started.append(args))
    click(qtbot, widget.train_button)
    warnings = [n.message for n in notifications if n.severity == NotificationSeverity.WARNING]
    assert started and any(m.startswith(f"Train: {expected}") for m in warnings)

    widget.set_start_model(ct_model)
    assert widget.fit_warning.isHidden()
    widget.set_start_model(None)
    assert widget.fit_warning.isHidden()


def test_a_refusal_after_a_run_leaves_no_stale_done(qtbot, scene, widget):
    _viewer, _image, annotation = scene

    def quick_job():
        yield from ()
        return None

    widget.runner.start(quick_job, lambda _result: None, title="Train")
    wait_idle(qtbot, widget)
    assert widget.runner.message == "Train: done" and widget.runner.fraction == 1.0
    annotation.data[:] = 0  # nothing painted: refused in the dock
    click(qtbot, widget.train_button)
    assert widget.runner.message == "" and widget.runner.fraction == 0.0
    assert widget.status.text().startswith("Train failed: no annotations")


def test_the_prompt_preview_is_never_offered_as_labels(qtbot, scene, widget):
    viewer, image, annotation = scene
    preview = show_preview(viewer, image, annotation.data > 0)  # added last, and selected
    row = widget.add_pair()
    assert preview not in row.labels_combo.choices and annotation in row.labels_combo.choices
    assert row.labels_combo.value is annotation

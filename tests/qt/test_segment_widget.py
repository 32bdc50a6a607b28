"""The Segment dock widget, driven by clicks: same mask as the CLI, update, Cancel, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_cards import card_only_package
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_medai._napari.layers import METADATA_KEY, layer_geometry
from napari_medai._napari.reader import read_layers
from napari_medai._qt import model_picker
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.model_picker import LOAD_FILE, LOAD_FOLDER
from napari_medai._qt.segment_widget import NO_IMAGE, SegmentWidget
from napari_medai.cli import main
from napari_medai.core import job_process
from napari_medai.core.models.card import WEIGHTS_FILE, ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.registry import MODELS_ENV, ModelEntry
from napari_medai.core.segmentation import jobs as segmentation_jobs
from napari_medai.core.volume import volume_to_sitk

#: CT window of the threshold model; LEVEL lies between 40 and 41 HU in window units.
WINDOW = {"kind": "window", "low": -160.0, "high": 240.0}
LEVEL = (40.5 + 160) / 400
STEEPNESS = 40.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def empty_model_folder(tmp_path, monkeypatch) -> Path:
    """The registry's user folder, empty unless a test puts a model in it."""
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv(MODELS_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def scan(tmp_path_factory, phantom) -> Path:
    """The phantom CT (oblique, flipped grid) as NIfTI, for the viewer and the CLI."""
    path = tmp_path_factory.mktemp("scans") / "phantom.nii.gz"
    sitk.WriteImage(volume_to_sitk(phantom[0]), str(path))
    return path


def unet_card(name: str = "tiny seg") -> ModelCard:
    """A tiny UNet run in LPS at 8 mm, so the result must be mapped back to the scan."""
    return ModelCard(
        name=name,
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "organ"},
        patch_size=[16, 16, 16],
        spacing=[8.0, 8.0, 8.0],
        orientation="LPS",
        intensity={"kind": "window", "low": -200.0, "high": 300.0},
    )


@pytest.fixture(scope="module")
def unet_package(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    network = build_network(unet_card())
    final = [m for m in network.modules() if getattr(m, "bias", None) is not None][-1]
    with torch.no_grad():
        final.bias.copy_(torch.tensor([0.0, 0.02]))  # both labels appear
    return save_model_package(tmp_path_factory.mktemp("models") / "tiny-pkg", unet_card(), network)


def threshold_conv() -> torch.nn.Conv3d:
    """1x1x1 conv: class-1 minus class-0 logit is 2*s*(windowed - LEVEL), i.e. mask = HU > 40."""
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-STEEPNESS, STEEPNESS]).reshape(2, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([STEEPNESS * LEVEL, -STEEPNESS * LEVEL]))
    return conv.eval()


def threshold_card(**changes) -> ModelCard:
    fields = {
        "name": "threshold",
        "architecture": "torchscript",
        "architecture_args": {},
        "label_names": {0: "background", 1: "dense"},
        "patch_size": [8, 32, 32],
        "intensity": WINDOW,
        **changes,
    }
    return ModelCard(**fields)


@pytest.fixture(scope="module")
def threshold_file(tmp_path_factory) -> Path:
    """A TorchScript threshold model with its sidecar card, on the scan's own grid."""
    path = tmp_path_factory.mktemp("models") / "threshold.pt"
    torch.jit.script(threshold_conv()).save(str(path))
    path.with_name(path.name + ".json").write_text(threshold_card().to_json(), encoding="utf-8")
    return path


def windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float64) - WINDOW["low"]) / (WINDOW["high"] - WINDOW["low"]), 0, 1)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2)


@pytest.fixture
def docked(make_napari_viewer, scan):
    """A napari window with the scan open and the widget docked through the manifest."""
    viewer = make_napari_viewer()
    [image] = viewer.open(str(scan), plugin="napari-medai")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Segment")
    assert isinstance(widget, SegmentWidget)
    return viewer, image, widget


@pytest.fixture
def viewer_widget(qtbot, scan):
    """The widget on a viewer model without a window: the same layer API, much faster."""
    viewer = ViewerModel()
    [image] = [viewer.add_layer(Layer.create(*data)) for data in read_layers(str(scan))]
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    return viewer, image, widget


def choose_file(widget: SegmentWidget, monkeypatch, path: Path) -> None:
    """Pick a model through "Load from file..." with the dialog answered by ``path``."""
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    widget.model_combo.value = widget.model_combo.get_choice(LOAD_FILE)


def choose_folder(widget: SegmentWidget, monkeypatch, path: Path) -> None:
    """Pick a model through "Load from folder..." with the dialog answered by ``path``."""
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(path))
    widget.model_combo.value = widget.model_combo.get_choice(LOAD_FOLDER)


def run_and_wait(qtbot, widget: SegmentWidget, timeout_ms: int = 20000) -> JobOutcome:
    assert widget.run_button.enabled, widget.reason.text()
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout_ms)
    return widget.runner.outcome


def snapshot(viewer) -> list[tuple]:
    return [(layer, layer.name, np.array(layer.data, copy=True)) for layer in viewer.layers]


def assert_unchanged(viewer, before: list[tuple]) -> None:
    assert len(viewer.layers) == len(before)
    for layer, (old, name, data) in zip(viewer.layers, before):
        assert layer is old and layer.name == name
        np.testing.assert_array_equal(layer.data, data)


def test_package_mask_equals_the_cli_mask(docked, qtbot, monkeypatch, unet_package, scan, tmp_path):
    viewer, image, widget = docked
    choose_folder(widget, monkeypatch, unet_package)
    assert widget.current_model_source() == str(unet_package)
    widget.device_combo.value = "cpu"

    assert run_and_wait(qtbot, widget) == JobOutcome.DONE

    [labels] = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert labels.name == f"{image.name} – tiny seg"
    assert labels.data.shape == image.data.shape
    assert layer_geometry(labels) == layer_geometry(image)
    out = tmp_path / "cli-out"
    assert main(["segment", str(scan), "--model", str(unet_package), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    [mask_file] = out.glob("*_seg.nii.gz")
    cli_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file)))
    assert set(np.unique(cli_mask)) == {0, 1}  # a real mask, not all one label
    np.testing.assert_array_equal(labels.data, cli_mask)

    provenance = labels.metadata[METADATA_KEY]["provenance"]
    sidecar = json.loads(next(out.glob("*_seg.json")).read_text())
    assert provenance["model"] == "tiny seg" and provenance["image"] == image.name
    assert provenance["sha256"] == sidecar["model"]["sha256"]
    assert provenance["config"] == sidecar["settings"]
    assert provenance["time"]
    assert list(labels.features["name"]) == ["background", "organ"]


def test_threshold_model_masks_maps_and_reruns(docked, qtbot, monkeypatch, threshold_file):
    viewer, image, widget = docked
    hu = np.array(image.data, copy=True)
    choose_file(widget, monkeypatch, threshold_file)
    widget.probability_check.value = True
    widget.uncertainty_check.value = True

    assert run_and_wait(qtbot, widget) == JobOutcome.DONE

    labels, probability, uncertainty = widget.output_layers
    assert [layer.name for layer in viewer.layers] == [
        image.name,
        f"{image.name} – threshold",
        f"{image.name} – threshold probability",
        f"{image.name} – threshold uncertainty",
    ]
    assert isinstance(labels, Labels) and isinstance(probability, Image)
    np.testing.assert_array_equal(labels.data, (hu > 40).astype(np.uint8))
    expected = 1 / (1 + np.exp(-2 * STEEPNESS * (windowed(hu) - LEVEL)))
    np.testing.assert_allclose(probability.data, expected, atol=1e-5)
    np.testing.assert_allclose(uncertainty.data, binary_entropy(expected), atol=1e-4)
    for layer in widget.output_layers:
        assert layer_geometry(layer) == layer_geometry(image)

    # The user restyles the result and edits the scan; Run again updates in place.
    labels.opacity = 0.3
    probability.colormap = "gray"
    image.data = hu - 100
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert len(viewer.layers) == 4
    # Layers handed to a docked widget are napari's proxies: == compares the layers.
    assert widget.output_layers == [labels, probability, uncertainty]
    np.testing.assert_array_equal(labels.data, (hu - 100 > 40).astype(np.uint8))
    assert labels.opacity == 0.3 and probability.colormap.name == "gray"

    widget.new_layer_check.value = True
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert len(viewer.layers) == 7
    assert widget.output_layers[0] != labels
    np.testing.assert_array_equal(widget.output_layers[0].data, labels.data)


@pytest.fixture
def in_thread(monkeypatch):
    """Run the dock's job in this process, where the tests' fake loaders are.

    The dock runs it in a worker process otherwise; the job is the same
    (tests/core/test_job_process.py covers the process around it).
    """
    monkeypatch.setattr(job_process, "SEPARATE_PROCESS", False)


class Sleepy(torch.nn.Module):
    """The threshold network, 0.2 s per call: a model slow enough to cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.network = threshold_conv()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(0.2)
        return self.network(x)


def test_cancel_stops_within_a_second_and_leaves_the_viewer(
    in_thread, viewer_widget, qtbot, monkeypatch
):
    viewer, _image, widget = viewer_widget
    sleepy = Sleepy()
    # 4x8x8 windows over 24x64x64 voxels: 384 windows, 96 calls, about 20 s.
    model = LoadedModel(threshold_card(patch_size=[4, 8, 8]), sleepy, "sleepy", "0" * 64)
    monkeypatch.setattr(segmentation_jobs, "load_model", lambda source, trusted=False: model)
    widget.add_model_source("sleepy")
    before = snapshot(viewer)

    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "window" in widget.runner.message, timeout=10000)
    assert not widget.run_button.enabled
    started = time.perf_counter()
    qtbot.mouseClick(widget.runner.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=1000)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert widget.runner.outcome == JobOutcome.CANCELLED
    assert sleepy.calls < 96
    assert_unchanged(viewer, before)
    assert widget.run_button.enabled


def test_a_broken_model_is_reported_and_no_layer_is_touched(
    viewer_widget, qtbot, monkeypatch, notifications, tmp_path
):
    viewer, _image, widget = viewer_widget
    broken = tmp_path / "broken-pkg"
    broken.mkdir()
    (broken / "card.json").write_text(unet_card().to_json(), encoding="utf-8")
    (broken / WEIGHTS_FILE).write_bytes(b"\x00 not safetensors")
    choose_folder(widget, monkeypatch, broken)
    before = snapshot(viewer)

    assert run_and_wait(qtbot, widget) == JobOutcome.FAILED

    assert_unchanged(viewer, before)
    [message] = [str(n.message) for n in notifications]
    assert message.startswith("Segment failed:") and "not a readable safetensors file" in message
    assert str(broken / WEIGHTS_FILE) in message


def test_a_missing_device_is_reported(
    viewer_widget, qtbot, monkeypatch, notifications, threshold_file
):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    viewer, _image, widget = viewer_widget
    choose_file(widget, monkeypatch, threshold_file)
    widget.device_combo.value = "cuda"
    before = snapshot(viewer)

    assert run_and_wait(qtbot, widget) == JobOutcome.FAILED

    assert_unchanged(viewer, before)
    [message] = [str(n.message) for n in notifications]
    assert "device 'cuda' was asked for" in message


def test_image_picker_follows_the_viewer(viewer_widget):
    viewer, image, widget = viewer_widget
    items = lambda: [layer.name for layer in widget.image_combo.choices]  # noqa: E731
    assert items() == [image.name] and widget.current_image() == image

    second = viewer.add_image(np.zeros((4, 8, 8), dtype=np.float32), name="second")
    viewer.add_labels(np.zeros((4, 8, 8), dtype=np.uint8), name="mask")
    viewer.add_image(np.zeros((8, 8), dtype=np.float32), name="flat")
    assert items() == [image.name, "second"]
    assert widget.current_image() == image  # adding layers keeps the pick

    second.name = "renamed"
    assert items() == [image.name, "renamed"]
    viewer.layers.remove(image)
    assert items() == ["renamed"]
    viewer.layers.remove(second)
    assert items() == [] and widget.current_image() is None
    assert not widget.run_button.enabled
    assert widget.reason.text() == NO_IMAGE == widget.run_button.tooltip


def test_model_picker_lists_registry_models_and_keeps_the_pick_on_a_cancelled_dialog(
    viewer_widget, monkeypatch, empty_model_folder, unet_package, threshold_file
):
    _viewer, _image, widget = viewer_widget
    save_model_package(
        empty_model_folder / "liver-v1", unet_card("liver"), build_network(unet_card())
    )
    widget.refresh_models()
    combo = widget.model_combo
    liver = str(empty_model_folder / "liver-v1")
    assert liver in combo.choices
    assert combo.native.itemText(combo.native.findData(liver)).startswith("liver · organ · ")
    combo.value = liver
    assert widget.current_model_source() == liver

    choose_file(widget, monkeypatch, threshold_file)
    assert widget.current_model_source() == str(threshold_file)
    assert combo.current_choice == "threshold.pt"

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: "")
    combo.value = combo.get_choice(LOAD_FOLDER)
    assert widget.current_model_source() == str(threshold_file)
    widget.refresh_models()  # loaded models stay listed and picked
    assert widget.current_model_source() == str(threshold_file)


def test_trust_checkbox_reaches_the_loader(
    in_thread, viewer_widget, qtbot, monkeypatch, threshold_file
):
    _viewer, _image, widget = viewer_widget
    calls = []
    model = LoadedModel(threshold_card(), threshold_conv(), "t", "0" * 64)

    def fake_load(source, trusted=False):
        calls.append((source, trusted))
        return model

    monkeypatch.setattr(segmentation_jobs, "load_model", fake_load)
    widget.add_model_source("/bundles/spleen")
    widget.trust_check.value = True
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    widget.trust_check.value = False
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert calls == [("/bundles/spleen", True), ("/bundles/spleen", False)]


# Guards, colours and details ----------------------------------------------------------


def fake_models(monkeypatch, *entries: ModelEntry) -> None:
    monkeypatch.setattr(model_picker, "list_models", lambda: list(entries))


MR_BRAIN = ModelEntry(
    "deepbet-brain", "brain", "builtin", True, None, "deepbet-brain", "MR", "head"
)


def test_a_fitting_model_is_preselected_and_a_misfit_warns_before_running(
    in_thread, viewer_widget, qtbot, monkeypatch, notifications, tmp_path
):
    _viewer, image, widget = viewer_widget
    liver = card_package(tmp_path / "liver", "segmentation", "liver")
    ct_model = ModelEntry("liver", "liver", "package", True, liver, "liver", "CT")
    fake_models(monkeypatch, MR_BRAIN, ct_model)
    widget.refresh_models()
    assert widget.current_model_source() == str(tmp_path / "liver")
    assert widget.fit_warning.isHidden()

    fake_models(monkeypatch, MR_BRAIN)
    widget.refresh_models()  # the pick is gone; deepbet is never offered for a CT
    assert widget.current_model_source() is None and not widget.run_button.enabled
    assert widget.reason.text().startswith("No listed model is made for CT")

    widget.model_combo.value = "deepbet-brain"
    assert (
        not widget.fit_warning.isHidden() and "made for MRI head scans" in widget.fit_warning.text()
    )
    loaded = []

    def fake_load(source, trusted=False):
        loaded.append(len(notifications))
        return LoadedModel(threshold_card(), threshold_conv(), "t", "0" * 64)

    monkeypatch.setattr(segmentation_jobs, "load_model", fake_load)
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE  # the user may still run it
    [warning] = [str(n.message) for n in notifications]
    assert "made for MRI head scans, but this image is CT" in warning
    assert loaded == [1]  # warned before the model was even loaded


def test_a_model_file_made_for_mr_warns_once_loaded(
    in_thread, viewer_widget, qtbot, monkeypatch, notifications, threshold_file
):
    _viewer, _image, widget = viewer_widget
    model = LoadedModel(threshold_card(modality="MR"), threshold_conv(), "t", "0" * 64)
    monkeypatch.setattr(segmentation_jobs, "load_model", lambda source, trusted=False: model)
    choose_file(widget, monkeypatch, threshold_file)
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    assert any("made for MRI scans, but this image is CT" in str(n.message) for n in notifications)


def test_results_stand_apart_and_show_their_details(
    in_thread, viewer_widget, qtbot, monkeypatch, threshold_file
):
    viewer, image, widget = viewer_widget
    choose_file(widget, monkeypatch, threshold_file)
    widget.probability_check.value = True
    assert run_and_wait(qtbot, widget) == JobOutcome.DONE
    labels, probability = widget.output_layers

    # Predicted labels are yellow, unlike napari's brown label 1 of painted labels.
    painted = viewer.add_labels(np.zeros((2, 2, 2), np.uint8))
    assert np.allclose(labels.colormap.map(1)[:3], [1.0, 0.831, 0.0], atol=0.01)
    assert not np.allclose(labels.colormap.map(1), painted.colormap.map(1))
    widget.outline_check.value = True
    assert labels.contour > 0
    widget.outline_check.value = False
    assert labels.contour == 0
    # The probability map is see-through where low, opaque where high.
    assert probability.blending == "translucent"
    assert probability.colormap.map(np.array([0.0]))[0, 3] == 0
    assert probability.colormap.map(np.array([1.0]))[0, 3] == 1

    viewer.layers.selection.active = labels
    text = widget.details.text()
    voxel_ml = layer_geometry(labels).voxel_volume_ml()
    expected_ml = np.count_nonzero(labels.data) * voxel_ml
    assert "Model: threshold" in text and "SHA-256: " in text and "Timings: " in text
    assert f"Volumes: dense {expected_ml:.1f} mL" in text
    assert f"dense {expected_ml:.1f} mL" in widget.status.text()

    # A failed run leaves no stale result line behind.
    monkeypatch.setattr(segmentation_jobs, "load_model", lambda *a, **k: 1 / 0)
    assert run_and_wait(qtbot, widget) == JobOutcome.FAILED
    assert widget.status.text() == "" and "Segment failed" in widget.runner.message


def test_a_listed_model_is_deleted_after_confirmation(
    viewer_widget, monkeypatch, empty_model_folder
):
    _viewer, _image, widget = viewer_widget
    folder = empty_model_folder / "liver-v1"
    save_model_package(folder, unet_card("liver"), build_network(unet_card()))
    widget.refresh_models()
    widget.model_combo.value = str(folder)
    assert not widget.delete_button.native.isHidden()

    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    assert not widget.delete_model() and folder.is_dir()
    assert widget.delete_model() and not folder.exists()
    assert str(folder) not in widget.model_combo.choices


# Models for this dock's task only (issue 18) ------------------------------------------


def card_package(folder: Path, task: str, name: str) -> Path:
    """A model package folder holding only its card (the picker reads no weights)."""
    return card_only_package(
        folder, name=name, label_names={0: "background", 1: "organ"}, patch_size=[1, 32, 32],
        task=task,
    )  # fmt: skip


def test_the_model_list_holds_segmentation_models_only(qtbot, empty_model_folder):
    classifier = card_package(empty_model_folder / "a-classifier", "classification", "organs")
    card_package(empty_model_folder / "b-gan", "generation", "gan")
    segmenter = card_package(empty_model_folder / "c-liver", "segmentation", "liver")
    widget = SegmentWidget(ViewerModel())  # no image open: the best fit is any scan's model
    qtbot.addWidget(widget.native)
    listed = [source for source in widget.model_combo.choices if source and "\0" not in source]
    assert str(segmenter) in listed
    assert str(classifier) not in listed and str(empty_model_folder / "b-gan") not in listed
    assert widget.current_model_source() == str(segmenter)


def test_a_classifier_loaded_from_its_folder_is_refused_before_anything_runs(
    viewer_widget, empty_model_folder, monkeypatch
):
    _viewer, _image, widget = viewer_widget
    classifier = card_package(empty_model_folder.parent / "organs", "classification", "organs")
    choose_folder(widget, monkeypatch, classifier)
    assert widget.current_model_source() == str(classifier)
    assert not widget.run_button.enabled
    assert widget.reason.text() == (
        "'organs' is a classification model (its card says so); pick a segmentation model"
    )


def test_a_layer_change_reads_no_model_card_and_still_picks_the_best_fit(
    qtbot, empty_model_folder, monkeypatch
):
    """Reading every card on each layer change stalled napari (91 ms with 30 models)."""
    segmenter = card_package(empty_model_folder / "c-liver", "segmentation", "liver")
    viewer = ViewerModel()
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    reads = []
    monkeypatch.setattr(model_picker, "list_models", lambda: reads.append(1) or [])
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="scan")
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="painted")
    assert reads == []
    assert widget.current_model_source() == str(segmenter)  # picked among those last read

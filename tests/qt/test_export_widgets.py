"""Export, Label statistics and Evaluate docks, driven through their buttons."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from napari.layers import Layer

from napari_medai._napari.reader import read_layers
from napari_medai._qt import export_widget
from napari_medai._qt.evaluate_widget import EvaluateWidget
from napari_medai._qt.export_widget import ExportWidget
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.stats_widget import StatisticsWidget
from napari_medai.core.io.reading import read_label_map


@pytest.fixture
def viewer(make_napari_viewer, phantom):
    """A viewer with the phantom CT and its organ labels, as the reader and Segment make them."""
    from napari_medai._napari.layers import image_layer_data, labels_layer_data

    viewer = make_napari_viewer()
    volume, organs = phantom
    for data, kwargs, kind in (image_layer_data(volume), labels_layer_data(organs, "organs")):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    return viewer


def _finish(qtbot, runner) -> None:
    # Evaluate starts the worker process (torch and MONAI load there): minutes on a busy machine.
    qtbot.waitUntil(lambda: not runner.running, timeout=180_000)


def test_export_asks_before_replacing_and_keeps_layer_and_file_on_failure(
    qtbot, viewer, tmp_path, monkeypatch, notifications
):
    widget = ExportWidget(viewer)
    widget.labels_layer.value = viewer.layers["organs"]
    widget.format.value = "nrrd"
    widget.path.value = tmp_path / "organs"
    widget.export_button.native.click()
    _finish(qtbot, widget.runner)
    out = tmp_path / "organs.nrrd"
    np.testing.assert_array_equal(read_label_map(out).array, viewer.layers["organs"].data)
    assert json.loads((tmp_path / "organs.json").read_text())["label_names"]
    before = out.read_bytes()
    asked = []
    monkeypatch.setattr(export_widget, "ask_overwrite", lambda _p, paths: asked.append(paths))
    widget.export_button.native.click()
    assert asked and not widget.runner.running and out.read_bytes() == before
    # Allowed to replace, the write fails half-way: the old file and the layer stay.
    monkeypatch.setattr(export_widget, "ask_overwrite", lambda _p, _paths: True)
    layer_before = viewer.layers["organs"].data.copy()

    def broken(image, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr("SimpleITK.WriteImage", broken)
    widget.export_button.native.click()
    _finish(qtbot, widget.runner)
    assert widget.runner.outcome is JobOutcome.FAILED
    # No stale line ("not exported: the file exists", "wrote ...") beside the runner's failure.
    assert widget.status.value == ""
    assert widget.runner.message.startswith("Export failed: ")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organs.json", "organs.nrrd"]
    np.testing.assert_array_equal(viewer.layers["organs"].data, layer_before)
    assert any("could not be written" in str(n.message) for n in notifications)


def test_dicom_formats_need_a_dicom_scan_and_then_write_a_seg(qtbot, make_napari_viewer, tmp_path):
    folder = tmp_path / "series"
    ct = np.random.default_rng(0).integers(-1000, 1000, (5, 16, 12)).astype(np.int16)
    write_series(folder, ct)
    viewer = make_napari_viewer()
    for data, kwargs, kind in read_layers(str(folder)):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    scan = viewer.layers[0]
    mask = np.zeros(scan.data.shape, dtype=np.uint8)
    mask[1:4, 3:9, 2:7] = 1
    viewer.add_labels(mask, name="painted", affine=scan.affine)
    widget = ExportWidget(viewer)
    widget.labels_layer.value = viewer.layers["painted"]
    widget.format.value = "dicom-seg"
    widget.path.value = tmp_path / "painted_seg.dcm"
    assert widget.export_button.enabled
    widget.image_layer.value = None
    assert not widget.export_button.enabled
    assert "DICOM series" in widget.export_button.tooltip
    widget.image_layer.value = scan
    widget.export_button.native.click()
    _finish(qtbot, widget.runner)
    seg = pydicom.dcmread(tmp_path / "painted_seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert seg.SegmentSequence[0].SegmentLabel == "label 1"


def test_statistics_then_evaluate_on_one_viewer(qtbot, viewer, tmp_path, phantom):
    widget = StatisticsWidget(viewer)
    widget.labels_layer.value = viewer.layers["organs"]
    widget.measure_button.native.click()
    _finish(qtbot, widget.runner)
    organs = phantom[1]
    values = [int(v) for v in np.unique(organs.array) if v]
    assert widget.table.shape[0] == len(values)
    assert [row.value for row in widget.rows] == values
    assert widget.rows[0].mean is not None and "mL in all" in widget.status.value
    widget.csv_path.value = tmp_path / "stats.csv"
    widget.save_button.native.click()
    lines = (tmp_path / "stats.csv").read_text().splitlines()
    assert lines[0].startswith("value,name,voxels,volume_ml") and len(lines) == len(values) + 1

    evaluate = EvaluateWidget(viewer)
    assert not evaluate.evaluate_button.enabled
    assert "two Labels" in evaluate.evaluate_button.tooltip
    layer = viewer.layers["organs"]
    viewer.add_labels(np.roll(layer.data, 1, axis=2), name="shifted", affine=layer.affine)
    evaluate.prediction.value = viewer.layers["shifted"]
    evaluate.reference.value = layer
    evaluate.evaluate_button.native.click()
    _finish(qtbot, evaluate.runner)
    dice = [scores.dice for scores in evaluate.result.labels]
    assert dice and all(0.5 < d < 1.0 for d in dice)
    evaluate.json_path.value = tmp_path / "scores.json"
    evaluate.save_button.native.click()
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["reference"] == "organs" and len(saved["labels"]) == len(dice)


def _export(qtbot, widget, labels, image, path) -> None:
    widget.labels_layer.value = labels
    widget.image_layer.value = image
    widget.format.value = "nifti"
    widget.path.value = path
    widget.export_button.native.click()
    _finish(qtbot, widget.runner)


@pytest.mark.parametrize("pick_scan", [False, True], ids=["no scan picked", "scan picked"])
def test_a_bare_array_is_exported_on_the_grid_file_save_takes(
    qtbot, viewer, tmp_path, phantom, notifications, pick_scan
):
    """Labels from ``viewer.add_labels(array)`` have no grid: they go on the scan of their shape."""
    ct = viewer.layers[0]
    painted = np.zeros(ct.data.shape, np.uint8)
    painted[5:8, 10:20, 10:20] = 2
    drawn = viewer.add_labels(painted, name="painted")
    widget = ExportWidget(viewer)
    _export(qtbot, widget, drawn, ct if pick_scan else None, tmp_path / "painted.nii.gz")
    saved = nib.load(tmp_path / "painted.nii.gz")
    np.testing.assert_allclose(saved.affine, phantom[0].geometry.ras_affine(), atol=1e-4)
    # nibabel's (x, y, z) against the layer's (z, y, x): voxel for voxel, nothing resampled away.
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), painted)
    said = [str(n.message) for n in notifications]
    assert "Exported \"painted\" on the grid of 'phantom CT' (same shape)." in said


def test_a_bare_array_of_no_open_scan_shape_is_refused_before_any_job(
    qtbot, viewer, tmp_path, notifications
):
    odd = viewer.add_labels(np.ones((5, 6, 7), np.uint8), name="odd")
    widget = ExportWidget(viewer)
    started = time.perf_counter()
    _export(qtbot, widget, odd, None, tmp_path / "odd.nii.gz")
    # Shape comparisons only, no file read and no job: far below 100 ms on any machine.
    assert time.perf_counter() - started < 0.1
    assert widget.runner.outcome is None  # no job started
    assert "no open scan is 5 x 6 x 7 voxels" in widget.status.value
    assert widget.status.value.startswith('Export refused: Cannot export "odd"')
    assert list(tmp_path.iterdir()) == []


def test_labels_wholly_off_the_picked_scan_are_refused(qtbot, viewer, tmp_path):
    organs = viewer.layers["organs"]
    away = viewer.add_labels(organs.data, name="away", affine=organs.affine)
    away.translate = (500.0, 0.0, 0.0)  # 500 mm above the scan
    widget = ExportWidget(viewer)
    _export(qtbot, widget, away, viewer.layers[0], tmp_path / "away.nii.gz")
    assert "lie on 'phantom CT'" in widget.status.value
    assert list(tmp_path.iterdir()) == []


def test_statistics_and_evaluate_forget_the_last_result_when_a_new_run_fails(
    qtbot, viewer, tmp_path, monkeypatch
):
    from napari_medai._qt import stats_widget
    from napari_medai.core.errors import MedaiError

    widget = StatisticsWidget(viewer)
    widget.labels_layer.value = viewer.layers["organs"]
    widget.measure_button.native.click()
    _finish(qtbot, widget.runner)
    assert widget.rows and "mL in all" in widget.status.value

    def failing(_labels, _image):
        raise MedaiError("the scan cannot be read")
        yield

    monkeypatch.setattr(stats_widget, "statistics_job", failing)
    widget.measure_button.native.click()
    _finish(qtbot, widget.runner)
    assert widget.runner.outcome is JobOutcome.FAILED
    assert widget.rows == [] and widget.table.shape[0] == 0 and widget.status.value == ""
    widget.csv_path.value = tmp_path / "stats.csv"
    assert not widget.save_button.enabled  # the last run's rows cannot be saved as this one's

    evaluate = EvaluateWidget(viewer)
    layer = viewer.layers["organs"]
    viewer.add_labels(np.roll(layer.data, 1, axis=2), name="shifted", affine=layer.affine)
    evaluate.prediction.value, evaluate.reference.value = viewer.layers["shifted"], layer
    evaluate.evaluate_button.native.click()
    _finish(qtbot, evaluate.runner)
    assert evaluate.result is not None
    viewer.layers["shifted"].data = viewer.layers["shifted"].data.astype(np.int16) * -1
    evaluate.evaluate_button.native.click()  # negative labels: the worker refuses
    _finish(qtbot, evaluate.runner)
    assert evaluate.runner.outcome is JobOutcome.FAILED
    assert evaluate.result is None and evaluate.table.shape[0] == 0
    assert "label(s) scored" not in evaluate.status.value


def test_statistics_refuses_a_scan_that_is_not_3d_greyscale_in_words(qtbot, viewer):
    viewer.add_image(np.zeros((4, 8, 8, 3), np.uint8), rgb=True, name="photo")
    widget = StatisticsWidget(viewer)
    widget.labels_layer.value = viewer.layers["organs"]
    widget.image_layer.value = viewer.layers["photo"]
    widget.measure_button.native.click()  # raised out of the click before
    assert widget.runner.outcome is None
    assert "'photo' is not a 3D greyscale scan" in widget.status.value


def test_a_typed_suffix_picks_its_format_and_a_shared_one_keeps_the_choice(viewer, tmp_path):
    widget = ExportWidget(viewer)
    widget.format.value = "nifti"
    widget.path.value = tmp_path / "organs.nrrd"
    assert widget.format.value == "nrrd" and widget.output_path().name == "organs.nrrd"
    widget.path.value = tmp_path / "liver"  # no suffix: the chosen format's is added
    assert widget.format.value == "nrrd" and widget.output_path().name == "liver.nrrd"
    widget.format.value = "rtstruct"
    widget.path.value = tmp_path / "organs.dcm"  # SEG's suffix too: RTSTRUCT stays
    assert widget.format.value == "rtstruct"

"""Export, Label statistics and Evaluate docks, driven through their buttons."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from napari.layers import Layer

from napari_medai._napari.reader import read_layers
from napari_medai._qt import export_widget
from napari_medai._qt.evaluate_widget import EvaluateWidget
from napari_medai._qt.export_widget import ExportWidget
from napari_medai._qt.job_runner import JobOutcome
from napari_medai._qt.stats_widget import StatisticsWidget
from napari_medai.core.io.reading import read_label_map


def _write_series(folder: Path, pixels: np.ndarray) -> None:
    """tests/core/dicom_factory.write_series (that folder is not on this tier's path)."""
    path = Path(__file__).parents[1] / "core" / "dicom_factory.py"
    spec = importlib.util.spec_from_file_location("_dicom_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_series(folder, pixels)


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
    qtbot.waitUntil(lambda: not runner.running, timeout=30000)


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
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organs.json", "organs.nrrd"]
    np.testing.assert_array_equal(viewer.layers["organs"].data, layer_before)
    assert any("could not be written" in str(n.message) for n in notifications)


def test_dicom_formats_need_a_dicom_scan_and_then_write_a_seg(qtbot, make_napari_viewer, tmp_path):
    folder = tmp_path / "series"
    ct = np.random.default_rng(0).integers(-1000, 1000, (5, 16, 12)).astype(np.int16)
    _write_series(folder, ct)
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

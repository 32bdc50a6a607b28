"""The Cohort widget: explains a disabled Run, takes the current folder, runs in the worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_scans import save_tiny_classifier, save_tiny_model, write_cohort

from napari_medai._qt.cohort_widget import CohortWidget
from napari_medai.core.cohort.record import RECORD_FILE

#: A run starts the worker process, which imports torch and MONAI: slow on a busy machine.
RUN_TIMEOUT_MS = 240_000


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    widget = CohortWidget(viewer)
    qtbot.addWidget(widget.native)
    return viewer, widget


def ct_model(folder: Path) -> Path:
    """A tiny two-class segmentation package whose card says it is made for CT."""
    return save_tiny_model(folder, name="tiny CT seg", modality="CT")


def write_mr(path: Path) -> Path:
    """A small scan whose header says MR (dcm2niix's NRRD key for the DICOM modality)."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 500, (20, 40, 40)).astype(np.int16))
    image.SetSpacing((5.0, 5.0, 5.0))
    image.SetMetaData("0008_0060_Modality", "MR")
    sitk.WriteImage(image, str(path))
    return path


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=RUN_TIMEOUT_MS)


def test_run_is_explained_until_ready_then_results_stay_on_disk(widget, qtbot, tmp_path):
    viewer, widget = widget
    assert not widget.run_button.enabled
    assert "cohort" in widget.run_button.tooltip.lower()

    scans = write_cohort(tmp_path / "study", phantoms=2, broken=False)
    viewer.open(str(scans[0]), plugin="napari-medai")
    widget.use_current.changed.emit(True)
    assert Path(widget.cohort.value) == tmp_path / "study"
    assert Path(widget.out.value) == tmp_path / "study_masks"
    assert "model" in widget.run_button.tooltip.lower()

    widget.models.add_source(save_tiny_model(tmp_path / "tiny"))
    assert widget.run_button.enabled
    layers = len(viewer.layers)
    widget.run_button.changed.emit(True)
    _wait(qtbot, widget)
    assert widget.summary.value.startswith("2 done / 0 failed / 0 skipped")
    assert len(list((tmp_path / "study_masks").glob("*_seg.nii.gz"))) == 2
    assert len(viewer.layers) == layers


def test_the_picker_offers_segmentation_models_by_title_and_runs_by_folder(widget, tmp_path):
    _viewer, widget = widget
    models = tmp_path / "models"
    segmenter = ct_model(models / "ct-seg")
    save_tiny_classifier(models / "classifier")
    widget.models.refresh()
    titles = [widget.model.native.itemText(i) for i in range(widget.model.native.count())]
    assert any(title.startswith("tiny CT seg") for title in titles), titles
    assert not any(title.startswith("tiny cls") for title in titles), titles
    title = next(title for title in titles if title.startswith("tiny CT seg"))
    widget.model.native.setCurrentText(title)
    # What the run loads is the package folder, never the title the picker shows.
    assert Path(widget.models.source) == segmenter
    widget.cohort.value, widget.out.value = tmp_path / "study", tmp_path / "out"
    assert widget.run_button.enabled
    widget.models.add_source(models / "classifier")
    assert "classification model" in widget.run_button.tooltip
    assert not widget.run_button.enabled


def test_a_ct_model_on_an_mr_scan_is_run_and_named_in_the_warnings(
    widget, qtbot, tmp_path, notifications
):
    _viewer, widget = widget
    study = tmp_path / "study"
    write_cohort(study, phantoms=1, broken=False)
    write_mr(study / "knee_mr.nrrd")
    widget.cohort.value = study
    widget.out.value = tmp_path / "out"
    widget.models.add_source(ct_model(tmp_path / "ct-seg"))
    widget.run_button.changed.emit(True)
    _wait(qtbot, widget)
    assert widget.summary.value.startswith("2 done / 0 failed")
    warning = "'tiny CT seg' is made for CT scans, but this image is MRI"
    assert f"Warning, knee_mr.nrrd: {warning}" in widget.summary.value
    assert widget.summary.value.count("made for CT") == 1  # the phantom CT fits
    rows = [json.loads(line) for line in (tmp_path / "out" / RECORD_FILE).read_text().splitlines()]
    warned = {Path(row["input"]).name: row.get("warning", "") for row in rows}
    assert warned["knee_mr.nrrd"].startswith(warning)
    assert [name for name, text in warned.items() if text] == ["knee_mr.nrrd"]
    said = [str(n.message) for n in notifications]
    assert any(text.startswith("Cohort run: scan knee_mr") and warning in text for text in said)


def test_run_without_a_model_is_refused_in_the_dock_before_any_worker(widget, tmp_path):
    _viewer, widget = widget
    widget.cohort.value, widget.out.value = tmp_path / "study", tmp_path / "out"
    started = time.perf_counter()
    widget._run()
    # A check of the form's fields: far below 100 ms on any machine, and no job started.
    assert time.perf_counter() - started < 0.1
    assert widget.runner.outcome is None and not widget.runner.running
    assert "Pick a segmentation model" in widget.run_button.tooltip


def test_a_failed_run_leaves_no_stale_status(widget, qtbot, tmp_path):
    _viewer, widget = widget
    study = tmp_path / "study"
    write_cohort(study, phantoms=1, broken=False)
    (tmp_path / "taken").write_text("a file, not a folder")
    widget.cohort.value = study
    widget.out.value = tmp_path / "taken"
    widget.models.add_source(save_tiny_model(tmp_path / "tiny"))
    widget.run_button.changed.emit(True)
    _wait(qtbot, widget)
    assert widget.summary.value == ""  # not "Running..." beside the failure
    assert widget.runner.message.startswith("Cohort run failed: ")
    assert "is a file, not a folder" in widget.runner.message

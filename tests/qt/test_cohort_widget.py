"""The Cohort widget: explains a disabled Run, takes the current folder, runs in the background."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from napari_medai._qt.cohort_widget import CohortWidget

# The cohort builders of the core tests (tests/core is on sys.path only for its own tests).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from cohort_scans import save_tiny_model, write_cohort  # noqa: E402


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = CohortWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget


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

    widget.model.value = str(save_tiny_model(tmp_path / "tiny"))
    assert widget.run_button.enabled
    layers = len(viewer.layers)
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: "done /" in widget.summary.value, timeout=60_000)
    assert widget.summary.value.startswith("2 done / 0 failed / 0 skipped")
    assert len(list((tmp_path / "study_masks").glob("*_seg.nii.gz"))) == 2
    assert len(viewer.layers) == layers

"""Decoding a DICOM series' pixels: runs of files decoded side by side, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from dicom_factory import modality_values, write_series

from napari_medai.core.io.dicom import pixels, read_dicom_job
from napari_medai.core.jobs import run_job


def _series(folder, slices=16, one_rescale=True):
    """Uncompressed CT files; without ``one_rescale`` the intercept alternates (runs of one)."""
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 2000, (slices, 12, 10)).astype(np.uint16)
    intercept = -1024.0 if one_rescale else [-1024.0, -1000.0] * (slices // 2)
    return write_series(folder, stored, intercept=intercept)


def test_uncompressed_series_is_one_series_read_into_the_volume(tmp_path, monkeypatch):
    """One the reader cannot read directly (say MONOCHROME1): no runs, no copy.

    The volume's array is the memory SimpleITK read the series into.
    """

    def no_runs(run, as_float):
        raise AssertionError("decoded run by run")

    monkeypatch.setattr(pixels, "_classic_run", no_runs)
    monkeypatch.setattr(pixels, "_directly_readable", lambda slices: False)
    paths = _series(tmp_path)
    volume = run_job(read_dicom_job(tmp_path))
    np.testing.assert_array_equal(volume.array, np.stack([modality_values(p) for p in paths]))
    assert not volume.array.flags.owndata


def test_runs_are_decoded_side_by_side_and_placed_in_order(tmp_path, monkeypatch):
    """The first two runs (one file each) must be in flight together, or the barrier breaks.

    Decoding one run after the other never has two in flight: the first waits
    alone at the barrier until its timeout and the read fails.
    """
    monkeypatch.setattr(pixels, "DECODE_THREADS", 2)
    barrier = threading.Barrier(2, timeout=10)
    original = pixels._classic_run

    def meeting(run, as_float):
        if run[0].path.name in ("IM0000.dcm", "IM0001.dcm"):
            barrier.wait()
        return original(run, as_float)

    monkeypatch.setattr(pixels, "_classic_run", meeting)
    paths = _series(tmp_path, one_rescale=False)
    volume = run_job(read_dicom_job(tmp_path))
    expected = np.stack([modality_values(path) for path in paths])
    np.testing.assert_array_equal(volume.array, expected)


@pytest.mark.parametrize("one_rescale", [True, False], ids=["direct read", "runs"])
def test_stopping_midway_leaves_no_decoding_behind(tmp_path, monkeypatch, one_rescale):
    """A consumer that stops (Cancel) ends the job: the read aborts, runs are dropped."""
    monkeypatch.setattr(pixels, "PROGRESS_SECONDS", 0.0)  # report before the first file
    _series(tmp_path, slices=24, one_rescale=one_rescale)
    job = read_dicom_job(tmp_path)
    stopped_at = next(p.fraction for p in job if "decoding" in p.message)
    job.close()
    assert stopped_at < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("dicom-decode")]

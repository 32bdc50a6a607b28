"""Decoding a DICOM series' pixels: runs of files decoded side by side, in order."""

from __future__ import annotations

import threading

import numpy as np
from dicom_factory import modality_values, write_series

from napari_medai.core.io.dicom import pixels, read_dicom_job
from napari_medai.core.jobs import run_job


def _series(folder, slices=16):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 2000, (slices, 12, 10)).astype(np.uint16)
    return write_series(folder, stored, intercept=-1024.0)


def test_runs_are_decoded_side_by_side_and_placed_in_order(tmp_path, monkeypatch):
    """The first two runs (8 files each) must be in flight together, or the barrier breaks.

    Decoding one run after the other never has two in flight: the first waits
    alone at the barrier until its timeout and the read fails.
    """
    monkeypatch.setattr(pixels, "DECODE_THREADS", 2)
    barrier = threading.Barrier(2, timeout=10)
    original = pixels._classic_run

    def meeting(run, as_float):
        if run[0].path.name in ("IM0000.dcm", "IM0008.dcm"):
            barrier.wait()
        return original(run, as_float)

    monkeypatch.setattr(pixels, "_classic_run", meeting)
    paths = _series(tmp_path)
    volume = run_job(read_dicom_job(tmp_path))
    expected = np.stack([modality_values(path) for path in paths])
    np.testing.assert_array_equal(volume.array, expected)


def test_stopping_midway_leaves_no_decoding_behind(tmp_path, monkeypatch):
    """A consumer that stops (Cancel) ends the job: pending runs are dropped, threads end."""
    monkeypatch.setattr(pixels, "CHUNK_SECONDS", 1e-6)  # one file per run: many runs
    _series(tmp_path, slices=24)
    job = read_dicom_job(tmp_path)
    stopped_at = next(p.fraction for p in job if "decoding" in p.message)
    job.close()
    assert stopped_at < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("dicom-decode")]

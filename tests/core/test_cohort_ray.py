"""The Ray engine on a local 2-worker cluster: same masks as local, a killed worker loses nothing.

One Ray cluster per module (starting one takes seconds); skipped without Ray.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_scans import save_tiny_model, write_cohort, write_manifest

from napari_medai.core.cohort.manifest import read_manifest
from napari_medai.core.cohort.run import EngineConfig, cohort_job
from napari_medai.core.cohort.tasks import TaskSpec
from napari_medai.core.jobs import run_job

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install napari-medai[ray])")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, request) -> tuple[Path, Path]:
    """12 scans: phantoms on 6+ grids, real files when present, a truncated and a fake file."""
    try:
        real = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        real = None  # without ../shared/data the cohort is phantoms only
    root = tmp_path_factory.mktemp("cohort")
    scans = write_cohort(root / "scans", phantoms=10, real_data=real)
    model = save_tiny_model(root / "tiny")
    return write_manifest(root / "cohort.csv", scans), model


@pytest.fixture(scope="module")
def local_masks(cohort, tmp_path_factory, one_torch_thread) -> dict[str, np.ndarray]:
    manifest, model = cohort
    out = tmp_path_factory.mktemp("local")
    summary = run_job(
        cohort_job(read_manifest(manifest), TaskSpec("segment", str(model), "cpu"), out)
    )
    assert (summary.done, summary.failed) == (10, 2)
    return {path.name: _array(path) for path in out.glob("*_seg.nii.gz")}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_ray_two_workers_match_local_and_survive_a_killed_worker(
    ray_cluster, cohort, local_masks, tmp_path
):
    manifest, model = cohort
    items = read_manifest(manifest)
    spec = TaskSpec("segment", str(model), "cpu")
    job = cohort_job(items, spec, tmp_path, EngineConfig("ray", workers=2))
    killed = None
    try:
        while True:
            event = next(job)
            row = event.payload.row
            if killed is None and row is not None and row["status"] == "done":
                # This worker holds the next scan already (two in flight per worker).
                killed = row["worker"]
                os.kill(killed, signal.SIGKILL)
    except StopIteration as finished:
        summary = finished.value
    assert killed is not None
    assert (summary.done, summary.failed) == (10, 2)
    reasons = {Path(r["input"]).name: r["error"] for r in summary.rows if r["status"] == "failed"}
    assert set(reasons) == {"truncated.nii.gz", "notes.nrrd"}
    assert all(reasons.values())
    masks = {path.name: _array(path) for path in tmp_path.glob("*_seg.nii.gz")}
    assert masks.keys() == local_masks.keys() and len(masks) == 10
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, local_masks[name], err_msg=name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

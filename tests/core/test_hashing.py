"""One hasher: a file is its bytes' SHA-256; a folder hashes its files' names and bytes.

Export sidecars, cohort records and model provenance all call
:func:`content_sha256`, so the same DICOM folder gets the same hash in each.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from cohort_scans import save_tiny_model
from dicom_factory import write_series

from napari_medai.core.cohort.manifest import scan_item
from napari_medai.core.cohort.tasks import CohortWorker, TaskSpec
from napari_medai.core.hashing import content_sha256
from napari_medai.core.io.export import ExportConfig, export_job, sidecar_path
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import LabelMap


@pytest.fixture
def series(tmp_path):
    """A 6-slice CT series in a folder of its own (the only scan of a cohort folder)."""
    folder = tmp_path / "cohort" / "series"
    write_series(folder, np.zeros((6, 24, 20), dtype=np.int16), spacing=(0.7, 0.8), step=2.5)
    return folder


def test_a_file_hashes_to_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 5000)
    assert content_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_hash_follows_names_and_bytes_not_its_place(tmp_path, series):
    digest = content_sha256(series)
    moved = shutil.copytree(series, tmp_path / "elsewhere" / "copy")
    assert content_sha256(moved) == digest
    first = sorted(moved.iterdir())[0]
    first.rename(first.with_name("renamed.dcm"))
    assert content_sha256(moved) != digest
    first.with_name("renamed.dcm").rename(first)
    with open(first, "ab") as handle:
        handle.write(b"\0")
    assert content_sha256(moved) != digest


def test_export_sidecar_and_cohort_record_hash_a_dicom_folder_alike(tmp_path, series):
    volume = read_volume(series)
    mask = np.zeros(volume.spatial_shape, dtype=np.uint8)
    mask[1:4, 5:15, 4:12] = 1
    labels = LabelMap(mask, volume.geometry, {"name": "mask"}, {1: "organ"})
    out = tmp_path / "export" / "mask.nii.gz"
    run_job(export_job(labels, out, ExportConfig(format="nifti"), {}, series))
    sidecar = json.loads(sidecar_path(out).read_text())

    model = save_tiny_model(tmp_path / "model")
    worker = CohortWorker(TaskSpec("segment", str(model)))
    row = worker.process(scan_item(series, series.parent), str(tmp_path / "runs"))

    assert row["status"] == "done", row["error"]
    assert sidecar["source_sha256"] == row["input_sha256"] == content_sha256(series)
    assert sidecar["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    weights = model / "model.safetensors"
    assert load_model(str(model)).sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

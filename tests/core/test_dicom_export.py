"""DICOM-SEG and RTSTRUCT out and back in, on small synthetic series written with pydicom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from napari_medai.core.errors import (
    ExportError,
    MedaiError,
    OutputExistsError,
    UnreadableFileError,
)
from napari_medai.core.io.dicom_derived import derived_kind, read_scan_and_labels_job
from napari_medai.core.io.dicom_export import DicomExportConfig, algorithm_of
from napari_medai.core.io.export import ExportConfig, export_job, sidecar_path
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SHAPE = (6, 24, 20)


@pytest.fixture
def series(tmp_path):
    """A 6-slice CT series in its own folder, its volume and a two-label mask on it."""
    folder = tmp_path / "series"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), spacing=(0.7, 0.8), step=2.5)
    volume = read_volume(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 5:15, 4:12] = 3
    mask[2:5, 16:20, 14:18] = 7
    mask[2, 8:11, 6:9] = 0  # a hole
    labels = LabelMap(mask, volume.geometry, {"name": "mask"}, {3: "tumour", 7: "cyst"})
    return folder, volume, labels


def _export(labels, path, source, fmt, **dicom):
    config = ExportConfig(format=fmt, dicom=DicomExportConfig(**dicom))
    return run_job(export_job(labels, path, config, {}, source, None, {3: (1.0, 0.0, 0.0)}))


@pytest.mark.parametrize(
    ("fmt", "compact"), [("dicom-seg", False), ("dicom-seg", True), ("rtstruct", False)]
)
def test_dicom_outputs_read_back_onto_the_scan(tmp_path, series, fmt, compact):
    folder, volume, labels = series
    out = tmp_path / "out" / f"{fmt}.dcm"
    result = _export(labels, out, folder, fmt, compact=compact)
    assert result.paths == [out, sidecar_path(out)]
    dataset = pydicom.dcmread(out)
    assert dataset.Modality == ("SEG" if fmt == "dicom-seg" else "RTSTRUCT")
    if compact:
        assert dataset.SegmentationType == "LABELMAP" and dataset.NumberOfFrames == 4
    assert derived_kind(out) == ("DICOM-SEG" if fmt == "dicom-seg" else "RTSTRUCT")
    # Beside the series: the reader gives the scan and the labels, values and names kept.
    (folder / out.name).write_bytes(out.read_bytes())
    scan, found = run_job(read_scan_and_labels_job(folder / out.name))
    assert scan.spatial_shape == SHAPE and len(found) == 1
    np.testing.assert_array_equal(found[0].array, labels.array)
    assert found[0].label_names == {3: "tumour", 7: "cyst"}
    assert found[0].geometry == volume.geometry
    # Opening the folder, or a zip of it, finds it too.
    _, in_folder = run_job(read_scan_and_labels_job(folder))
    np.testing.assert_array_equal(in_folder[0].array, labels.array)
    archive = Path(shutil.make_archive(str(tmp_path / "zipped"), "zip", folder))
    _, in_zip = run_job(read_scan_and_labels_job(archive))
    np.testing.assert_array_equal(in_zip[0].array, labels.array)
    assert in_zip[0].metadata["source"] == out.name


def test_alone_it_names_the_series_it_needs(tmp_path, series):
    folder, volume, labels = series
    out = tmp_path / "alone" / "seg.dcm"
    _export(labels, out, folder, "dicom-seg")
    with pytest.raises(UnreadableFileError, match=volume.metadata["series_uid"]):
        run_job(read_scan_and_labels_job(out))


def test_seg_records_algorithm_colour_and_deidentifies(tmp_path, series):
    folder, _, labels = series
    out = tmp_path / "seg.dcm"
    config = ExportConfig("dicom-seg", DicomExportConfig(deidentify=True))
    run_job(export_job(labels, out, config, {"model": "liver-net"}, folder, None, {3: (1, 0, 0)}))
    seg = pydicom.dcmread(out)
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert segments["tumour"].SegmentAlgorithmType == "AUTOMATIC"
    assert segments["tumour"].SegmentAlgorithmName == "liver-net"
    assert "RecommendedDisplayCIELabValue" in segments["tumour"]
    assert seg.PatientName == "" and seg.PatientIdentityRemoved == "YES"
    assert "SECRET-ID-42" not in out.read_bytes().decode("latin-1")
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["model"]["name"] == "liver-net" and sidecar["source_sha256"]
    assert "Doe" not in sidecar_path(out).read_text()


def test_algorithm_type_follows_provenance():
    assert algorithm_of({}) == ("MANUAL", None)
    assert algorithm_of({"model": "m"}) == ("AUTOMATIC", "m")
    assert algorithm_of({"model": "m", "edited": True}) == ("SEMIAUTOMATIC", "m")
    assert algorithm_of({"model": "m"}, "manual") == ("MANUAL", None)


def test_blank_uids_are_refused_with_a_way_out(tmp_path):
    folder = tmp_path / "anonymised"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), blank_uids=True)
    volume = read_volume(folder)
    labels = LabelMap(np.ones(SHAPE, dtype=np.uint8), volume.geometry, {}, {})
    with pytest.raises(ExportError, match="blank.*NIfTI or NRRD.*new UIDs"):
        _export(labels, tmp_path / "seg.dcm", folder, "dicom-seg")
    assert not (tmp_path / "seg.dcm").exists()
    result = _export(labels, tmp_path / "seg.dcm", folder, "dicom-seg", new_uids=True)
    assert any("new UIDs" in warning for warning in result.warnings)
    assert pydicom.dcmread(tmp_path / "seg.dcm").Modality == "SEG"


def test_labels_off_the_series_grid_are_refused(tmp_path, series):
    folder, volume, labels = series
    shifted = LabelMap(labels.array[:, :-1], volume.geometry, {}, {})
    with pytest.raises(ExportError, match="not on the grid"):
        _export(shifted, tmp_path / "seg.dcm", folder, "dicom-seg")


def test_a_failing_write_keeps_the_earlier_file_and_the_labels(tmp_path, series, monkeypatch):
    import highdicom

    folder, _, labels = series
    out = tmp_path / "seg.dcm"
    _export(labels, out, folder, "dicom-seg")
    before, mask_before = out.read_bytes(), labels.array.copy()

    def broken_save(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(highdicom.seg.Segmentation, "save_as", broken_save)
    config = ExportConfig("dicom-seg", sidecar=False)
    # core.files reports the system's error as a MedaiError naming the file.
    with pytest.raises(MedaiError, match="seg.dcm.*disk full"):
        run_job(export_job(labels, out, config, {}, folder, overwrite=True))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "seg.json", "series"]
    np.testing.assert_array_equal(labels.array, mask_before)


def test_nifti_export_refuses_to_overwrite_and_needs_dicom_for_seg(tmp_path, phantom):
    _, organs = phantom
    out = tmp_path / "organs.nrrd"
    run_job(export_job(organs, out, ExportConfig("nrrd")))
    assert json.loads(sidecar_path(out).read_text())["format"] == "nrrd"
    with pytest.raises(OutputExistsError):
        run_job(export_job(organs, out, ExportConfig("nrrd")))
    with pytest.raises(ExportError, match="did not come from DICOM"):
        run_job(export_job(organs, tmp_path / "x.dcm", ExportConfig("dicom-seg")))

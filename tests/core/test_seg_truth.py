"""DICOM-SEG and RTSTRUCT exports checked against independent readers (highdicom, pydicom).

What the tool writes must hold exactly the voxels of each label (read back with
highdicom, not with our reader), refuse label values the format cannot carry,
carry no identifier of the source when de-identified, and open again on its
series even when that series' UIDs were blank.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from pydicom.dataset import Dataset

from napari_medai.cli import main
from napari_medai.core.errors import ExportError
from napari_medai.core.io.dicom_derived import read_scan_and_labels_job
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.dicom_seg import read_dicom_seg
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SHAPE = (5, 16, 12)
ORIGIN_Z, STEP = 40.0, 2.5
#: Identifiers planted in the source series; none may reach a de-identified output.
PLANTED = (
    "Doe^Jane",
    "SECRET-ID-42",
    "St Elsewhere Hospital",
    "Nested Clinic",
    "NESTED-ID-99",
    "Smith^Nested",
    "ACME-SERIAL-7",
)


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "series"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), step=STEP)
    return folder, read_volume(folder)


def _export(labels, out, source, fmt="dicom-seg", sidecar=False, **dicom):
    config = ExportConfig(format=fmt, dicom=DicomExportConfig(**dicom), sidecar=sidecar)
    return run_job(export_job(labels, out, config, {}, source))


def _slice_of_each_file(folder: Path) -> dict[str, int]:
    """SOPInstanceUID -> slice index, from the headers (z position over the factory's step)."""
    slices = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        slices[ds.SOPInstanceUID] = round((float(ds.ImagePositionPatient[2]) - ORIGIN_Z) / STEP)
    return slices


def _highdicom_masks(out: Path, folder: Path) -> dict[int, np.ndarray]:
    """label value (from the tracking ID) -> its mask on the series' slices, read by highdicom."""
    seg = hd.seg.segread(out)
    slices = _slice_of_each_file(folder)
    uids = sorted(slices, key=slices.get)
    masks = {}
    for segment in seg.SegmentSequence:
        number = int(segment.SegmentNumber)
        if number == 0:
            continue  # a LABELMAP's background segment
        value = int(str(segment.TrackingID).rsplit(" ", 1)[1])
        pixels = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], assert_missing_frames_are_empty=True
        )
        masks[value] = pixels[..., 0] > 0
    return masks


@pytest.mark.parametrize("compact", [False, True])
def test_every_segment_holds_exactly_the_voxels_of_its_label(tmp_path, series, compact):
    folder, volume = series
    mask = np.zeros(SHAPE, dtype=np.int32)
    mask[1:4, 2:9, 3:8] = 1
    mask[2:5, 6:12, 5:10] = 300  # overlaps label 1's box: the later write takes those voxels
    mask[0, 0, 0] = 65535  # the largest value a SEG carries, in one voxel
    mask[4, 15, 11] = 2
    out = tmp_path / "seg.dcm"
    _export(LabelMap(mask, volume.geometry, {"name": "mask"}, {}), out, folder, compact=compact)
    masks = _highdicom_masks(out, folder)
    assert sorted(masks) == [1, 2, 300, 65535]
    for value, found in masks.items():
        np.testing.assert_array_equal(found, mask == value, err_msg=f"label {value}")


@pytest.mark.parametrize(
    ("value", "fmt", "match"),
    [
        (-1, "dicom-seg", "negative values \\(-1\\)"),
        (-1, "rtstruct", "negative values \\(-1\\)"),
        (70000, "dicom-seg", "above 65535 \\(70000\\)"),
        (3_000_000_000, "dicom-seg", "above 65535 \\(3000000000\\)"),
    ],
)
def test_label_values_the_format_cannot_carry_are_refused(tmp_path, series, value, fmt, match):
    folder, volume = series
    mask = np.zeros(SHAPE, dtype=np.int64)
    mask[1:3, 2:6, 2:6] = 5
    mask[3, 4:8, 4:8] = value
    out = tmp_path / "out.dcm"
    with pytest.raises(ExportError, match=match):
        _export(LabelMap(mask, volume.geometry, {}, {}), out, folder, fmt)
    assert not out.exists()


def _plant_identifiers(folder: Path) -> None:
    """Identifiers at the top level and inside sequences highdicom copies into a SEG."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.InstitutionName = "St Elsewhere Hospital"
        ds.Manufacturer = "ACME"  # with it highdicom copies the source's equipment
        ds.DeviceSerialNumber = "ACME-SERIAL-7"
        physician = Dataset()
        physician.InstitutionName = "Nested Clinic"
        ds.ConsultingPhysicianIdentificationSequence = [physician]
        group = Dataset()
        group.PatientID = "NESTED-ID-99"
        group.VerifyingObserverName = "Smith^Nested"  # a person name in an unexpected place
        ds.GroupOfPatientsIdentificationSequence = [group]
        ds.save_as(path)


def _planted_in(dataset: Dataset) -> list[str]:
    """Every planted identifier found in any element value, at any nesting depth."""
    found = []
    for element in dataset.iterall():
        if element.VR != "SQ":
            text = str(element.value)
            found += [f"{element.keyword}: {p}" for p in PLANTED if p.lower() in text.lower()]
    return found


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_deidentified_outputs_hold_no_planted_identifier(tmp_path, series, fmt):
    folder, volume = series
    _plant_identifiers(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 3:9, 2:7] = 1
    # A label file named after the patient: its name must not reach the output.
    labels_path = tmp_path / "Doe^Jane SECRET-ID-42.nii.gz"
    write_label_map(LabelMap(mask, volume.geometry), labels_path)
    plain, clean = tmp_path / "plain.dcm", tmp_path / "clean.dcm"
    argv = ["export", str(labels_path), "--like", str(folder), "--format", fmt]
    assert main([*argv, "--out", str(plain), "--no-sidecar"]) == 0
    assert main([*argv, "--out", str(clean), "--deidentify"]) == 0
    # The planted values do reach an output that is not de-identified: the scan is sound.
    planted_plain = _planted_in(pydicom.dcmread(plain))
    assert any("Nested Clinic" in p for p in planted_plain) or fmt == "rtstruct"
    assert any("SECRET-ID-42" in p for p in planted_plain)
    written = pydicom.dcmread(clean)
    assert _planted_in(written) == []
    raw = clean.read_bytes().decode("latin-1").lower()
    assert [p for p in PLANTED if p.lower() in raw] == []
    assert written.PatientIdentityRemoved == "YES"
    sidecar = clean.with_suffix(".json").read_text().lower()
    assert [p for p in PLANTED if p.lower() in sidecar] == []


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_an_export_with_new_uids_opens_again_on_its_series(tmp_path, fmt):
    folder = tmp_path / "anonymised"
    write_series(folder, np.zeros(SHAPE, dtype=np.int16), blank_uids=True, step=STEP)
    volume = read_volume(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 3:9, 2:7] = 4
    labels = LabelMap(mask, volume.geometry, {"name": "mask"}, {4: "nodule"})
    first, second = tmp_path / "first.dcm", folder / f"{fmt}.dcm"
    _export(labels, first, folder, fmt, new_uids=True)
    _export(labels, second, folder, fmt, new_uids=True)
    references = set()
    for path in (first, second):
        ds = pydicom.dcmread(path)
        sequence = ds.get("ReferencedSeriesSequence") or (
            ds.ReferencedFrameOfReferenceSequence[0]
            .RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence
        )
        references.add(sequence[0].SeriesInstanceUID)
    assert len(references) == 1, "each export invented another series UID"
    scan, found = run_job(read_scan_and_labels_job(second))
    assert scan.spatial_shape == SHAPE and len(found) == 1
    np.testing.assert_array_equal(found[0].array, mask)
    assert found[0].label_names == {4: "nodule"}
    _, in_folder = run_job(read_scan_and_labels_job(folder))
    assert len(in_folder) == 1
    np.testing.assert_array_equal(in_folder[0].array, mask)


def _seg(datasets, pixels, kind, segments, out: Path) -> Path:
    """A SEG written by highdicom itself (not by our exporter) on the series' datasets."""
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="MANUAL",
        )
        for number, label in segments
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        max_fractional_value=255,
    )
    seg.save_as(out)
    return out


def _sorted_sources(folder: Path) -> list[Dataset]:
    """The series' datasets in slice order, with the empty patient and study fields SEG needs."""
    slices = _slice_of_each_file(folder)
    datasets = [pydicom.dcmread(p) for p in folder.iterdir()]
    for ds in datasets:
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
            setattr(ds, keyword, ds.get(keyword, ""))
        ds.AccessionNumber = ds.ReferringPhysicianName = ""
    return sorted(datasets, key=lambda ds: slices[ds.SOPInstanceUID])


def test_overlapping_segments_warn_and_the_higher_number_wins(tmp_path, series):
    folder, volume = series
    pixels = np.zeros((*SHAPE, 2), dtype=bool)
    pixels[1:3, 2:8, 2:8, 0] = True
    pixels[2:4, 5:10, 5:10, 1] = True
    shared = int(np.sum(pixels[..., 0] & pixels[..., 1]))
    out = _seg(
        _sorted_sources(folder), pixels, "BINARY", [(1, "liver"), (2, "tumour")], tmp_path / "o.dcm"
    )
    labels = read_dicom_seg(out, volume)
    (warning,) = labels.metadata["warnings"]
    assert (
        f"{shared} voxel(s)" in warning
        and '"liver"' in warning
        and "the highest-numbered one is shown" in warning
    )
    truth = np.where(pixels[..., 1], 2, np.where(pixels[..., 0], 1, 0))
    np.testing.assert_array_equal(labels.array, truth)


def test_a_fractional_seg_is_read_at_one_half_with_a_warning(tmp_path, series):
    folder, volume = series
    fractions = np.zeros(SHAPE, dtype=np.float32)
    fractions[1:4, 2:8, 2:8] = 0.3
    fractions[2, 3:6, 3:6] = 0.8
    fractions[3, 4, 4] = 0.5
    out = _seg(
        _sorted_sources(folder), fractions, "FRACTIONAL", [(1, "lesion")], tmp_path / "f.dcm"
    )
    labels = read_dicom_seg(out, volume)
    assert any("FRACTIONAL" in w and "0.5" in w for w in labels.metadata["warnings"])
    # Stored as 0..255: 0.5 becomes 128/255, still at least one half.
    np.testing.assert_array_equal(labels.array, (fractions >= 0.5).astype(np.uint8))

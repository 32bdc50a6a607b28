"""RTSTRUCT export checked with pydicom alone, and damaged structure sets read without a crash.

Written files are read back from their headers with pydicom (ROI numbers and names,
point counts, every point in its referenced image's plane and enclosing exactly the
mask's pixels there), not through the reader's own geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import rotation_iop, write_series
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from skimage.draw import polygon2mask

from napari_medai.core.errors import ExportError, UnreadableFileError
from napari_medai.core.io.dicom_derived import read_scan_and_labels_job
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.rtstruct import read_rtstruct
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap

SHAPE = (6, 24, 20)
CONTOUR_DATA = 0x30060050
#: Written points have three decimals (1 micrometre): each lies within 0.5 um per axis of
#: the plane, so 1e-3 mm bounds its distance to the plane on any machine.
PLANE_MM = 1e-3
IOP = rotation_iop((12, 0, 7))


@pytest.fixture
def series(tmp_path):
    """An oblique 6-slice CT series, its volume and a two-label mask (liver 3, cyst 7)."""
    folder = tmp_path / "series"
    files = write_series(folder, np.zeros(SHAPE, dtype=np.int16), iop=IOP, spacing=(0.7, 0.9))
    volume = read_volume(folder)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:4, 5:15, 4:12] = 3
    mask[2, 8:11, 6:9] = 0  # a hole
    mask[2:5, 16:20, 14:18] = 7
    labels = LabelMap(mask, volume.geometry, {"name": "Doe^Jane mask"}, {3: "liver", 7: "cyst"})
    return folder, files, volume, labels


def _export(labels: LabelMap, path: Path, folder: Path, **dicom) -> Path:
    config = ExportConfig("rtstruct", DicomExportConfig(**dicom), sidecar=False)
    run_job(export_job(labels, path, config, {}, folder))
    return path


def _plane_indices(points: np.ndarray, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of world points in an image's pixel grid, and their distance to its plane."""
    ds = pydicom.dcmread(image, stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    offset = points - np.array(ds.ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    rows = offset @ iop[3:] / row_spacing
    columns = offset @ iop[:3] / column_spacing
    return np.column_stack([rows, columns]), offset @ np.cross(iop[:3], iop[3:])


def _drawn_by_pydicom(path: Path, files: list[Path]) -> dict[int, np.ndarray]:
    """Each ROI's mask on the source files, rasterised from pydicom's reading of the file."""
    by_uid = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): k
        for k, f in enumerate(files)
    }
    ds = pydicom.dcmread(path)
    masks = {}
    for item in ds.ROIContourSequence:
        mask = np.zeros(SHAPE, dtype=bool)
        for contour in item.ContourSequence:
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert int(contour.NumberOfContourPoints) == len(points) >= 3
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            k = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            in_plane, distance = _plane_indices(points, files[k])
            assert np.abs(distance).max() < PLANE_MM
            mask[k] ^= polygon2mask(SHAPE[1:], in_plane)
        masks[int(item.ReferencedROINumber)] = mask
    return masks


def test_written_contours_lie_in_their_images_planes_and_enclose_the_mask(tmp_path, series):
    folder, files, volume, labels = series
    # File k holds slice k of the volume (checked from the header, not assumed).
    first = pydicom.dcmread(files[0], stop_before_pixels=True).ImagePositionPatient
    np.testing.assert_allclose(volume.geometry.index_to_world([[0, 0, 0]])[0, ::-1], first)
    out = _export(labels, tmp_path / "rt.dcm", folder)
    ds = pydicom.dcmread(out)
    assert {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence} == {
        3: "liver",
        7: "cyst",
    }
    masks = _drawn_by_pydicom(out, files)
    assert set(masks) == {3, 7}
    for value, mask in masks.items():
        np.testing.assert_array_equal(mask, labels.array == value)
    back = read_rtstruct(out, volume)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.metadata["warnings"] == []


def test_label_70000_round_trips_with_its_name(tmp_path, series):
    folder, files, volume, labels = series
    array = labels.array.astype(np.uint32)
    array[array == 7] = 70000
    big = LabelMap(array, volume.geometry, {}, {3: "liver", 70000: "lesion"})
    out = _export(big, tmp_path / "rt.dcm", folder)
    ds = pydicom.dcmread(out)
    assert {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence} == {
        3: "liver",
        70000: "lesion",
    }
    np.testing.assert_array_equal(_drawn_by_pydicom(out, files)[70000], array == 70000)
    (folder / out.name).write_bytes(out.read_bytes())
    _, found = run_job(read_scan_and_labels_job(folder / out.name))
    np.testing.assert_array_equal(found[0].array, array)
    assert found[0].label_names == {3: "liver", 70000: "lesion"}


@pytest.mark.parametrize(("value", "dtype"), [(-1, np.int16), (3_000_000_000, np.uint32)])
def test_labels_that_cannot_be_roi_numbers_are_refused(tmp_path, series, value, dtype):
    folder, _, volume, labels = series
    array = labels.array.astype(dtype)
    array[array == 7] = value
    odd = LabelMap(array, volume.geometry, {}, {})
    with pytest.raises(ExportError, match=str(value)):
        _export(odd, tmp_path / "rt.dcm", folder)
    assert not (tmp_path / "rt.dcm").exists()


def test_deidentified_structure_set_carries_no_name_from_the_layer(tmp_path, series):
    folder, _, _, labels = series
    out = _export(labels, tmp_path / "rt.dcm", folder, deidentify=True)
    assert "Doe" not in out.read_bytes().decode("latin-1")


# Damaged structure sets: mutations of a written file.


@pytest.fixture
def written(tmp_path, series):
    """The series' mask written as an RTSTRUCT, and a function writing a mutated copy."""
    folder, files, volume, labels = series
    out = _export(labels, tmp_path / "rt.dcm", folder)

    def mutated(change: Callable[[Dataset], None]) -> Path:
        ds = pydicom.dcmread(out)
        change(ds)
        path = tmp_path / "mutated.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return volume, labels, mutated


def _raw(dataset: Dataset, tag: int, vr: str, text: str) -> None:
    """Set an element's bytes as written, bypassing pydicom's validation (damaged values)."""
    encoded = text.encode("latin-1")
    encoded += b" " * (len(encoded) % 2)
    dataset[tag] = RawDataElement(Tag(tag), vr, len(encoded), encoded, 0, False, True)


def _cyst(ds: Dataset) -> Dataset:
    return ds.ROIContourSequence[1]


def _set_points(text: str, stated: int | None = None) -> Callable[[Dataset], None]:
    """Replace the cyst's first ContourData with ``text`` (and its stated point count)."""

    def change(ds: Dataset) -> None:
        contour = _cyst(ds).ContourSequence[0]
        _raw(contour, CONTOUR_DATA, "DS", text)
        if stated is not None:
            contour.NumberOfContourPoints = stated

    return change


def _set_type(kind: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        _cyst(ds).ContourSequence[0].ContourGeometricType = kind

    return change


def _moved(offset: tuple[float, float, float]) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        contour = _cyst(ds).ContourSequence[0]
        points = np.array(contour.ContourData, dtype=float).reshape(-1, 3) + offset
        contour.ContourData = [f"{v:.3f}" for v in points.ravel()]

    return change


DAMAGE = {
    "no points": (_set_points(""), "with no points"),
    "4 values": (_set_points("1\\2\\3\\4"), "not a multiple of 3"),
    "text": (_set_points("1\\2\\abc\\4\\5\\6\\7\\8\\9"), "not numbers"),
    "nan": (_set_points("1\\2\\nan\\4\\5\\6\\7\\8\\9"), "NaN or infinite"),
    "inf": (_set_points("1\\2\\inf\\4\\5\\6\\7\\8\\9"), "NaN or infinite"),
    "2 points": (_set_points("1\\2\\3\\4\\5\\6", stated=2), "fewer than 3 points"),
    "miscounted": (_set_points("1\\2\\3\\4\\5\\6\\7\\8\\9", stated=4), "disagrees"),
    "POINT": (_set_type("POINT"), "POINT, which encloses no area"),
    "open": (_set_type("OPEN_PLANAR"), "OPEN_PLANAR, which encloses no area"),
    "unknown type": (_set_type("SPLINE"), 'unknown type "SPLINE"'),
    "off the image": (_moved(tuple(500.0 * np.array(IOP[:3]))), "outside the scan"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_contour_is_left_out_and_named(written, kind):
    volume, labels, mutated = written
    change, reason = DAMAGE[kind]
    back = read_rtstruct(mutated(change), volume)
    # The cyst's first contour outlines it on slice 2; everything else is read as written.
    expected = labels.array.copy()
    expected[2][expected[2] == 7] = 0
    np.testing.assert_array_equal(back.array, expected)
    assert back.label_names == {3: "liver", 7: "cyst"}
    (note,) = back.metadata["warnings"]
    assert note.startswith('ROI "cyst" (number 7): 1 contour(s) left out') and reason in note


def test_a_contour_between_slices_is_left_out_and_named(written):
    volume, labels, mutated = written
    step = volume.geometry.direction[:, 0][::-1] * volume.geometry.spacing[0]
    back = read_rtstruct(mutated(_moved(tuple(step / 2))), volume)
    assert back.metadata["warnings"] == [
        'ROI "cyst" (number 7): 1 contour(s) left out (1 between or across the slices of the scan)'
    ]


def test_a_contour_smaller_than_a_voxel_is_named(written):
    volume, labels, mutated = written
    # A triangle around a point between four voxel centres covers none of them.
    corner = volume.geometry.index_to_world([[2, 16.5, 14.5]])[0, ::-1]
    row, column = volume.geometry.direction[:, 1][::-1], volume.geometry.direction[:, 2][::-1]
    tiny = [corner, corner + 0.1 * row, corner + 0.1 * column]
    text = "\\".join(f"{v:.4f}" for v in np.ravel(tiny))
    back = read_rtstruct(mutated(_set_points(text, stated=3)), volume)
    assert "1 too small to cover the centre of a voxel" in back.metadata["warnings"][0]


@pytest.mark.parametrize(("number", "why"), [(0, "background"), (-5, "whole number from 1")])
def test_roi_numbers_that_cannot_be_labels_get_a_free_one(written, number, why):
    volume, labels, mutated = written

    def renumber(ds: Dataset) -> None:
        ds.StructureSetROISequence[1].ROINumber = number
        _cyst(ds).ReferencedROINumber = number

    back = read_rtstruct(mutated(renumber), volume)
    expected = labels.array.copy()
    expected[expected == 7] = 1
    np.testing.assert_array_equal(back.array, expected)
    assert back.label_names == {3: "liver", 1: "cyst"}
    (note,) = back.metadata["warnings"]
    assert note.startswith(f'ROI "cyst" (number {number}) is read as label 1') and why in note


def test_a_non_numeric_roi_number_still_pairs_by_its_text(written):
    volume, labels, mutated = written

    def renumber(ds: Dataset) -> None:
        _raw(ds.StructureSetROISequence[1], 0x30060022, "IS", "x7")
        _raw(_cyst(ds), 0x30060084, "IS", "x7")

    back = read_rtstruct(mutated(renumber), volume)
    assert back.label_names == {3: "liver", 1: "cyst"}
    assert np.count_nonzero(back.array == 1) == np.count_nonzero(labels.array == 7)


def test_roi_number_70000_is_read_into_a_wide_enough_array(written):
    volume, labels, mutated = written

    def renumber(ds: Dataset) -> None:
        ds.StructureSetROISequence[1].ROINumber = 70000
        _cyst(ds).ReferencedROINumber = 70000

    back = read_rtstruct(mutated(renumber), volume)
    assert back.array.dtype == np.uint32
    np.testing.assert_array_equal(back.array == 70000, labels.array == 7)
    assert back.label_names == {3: "liver", 70000: "cyst"} and back.metadata["warnings"] == []


def test_two_rois_with_one_number_are_not_merged(written):
    volume, labels, mutated = written

    def renumber(ds: Dataset) -> None:
        ds.StructureSetROISequence[1].ROINumber = 3
        _cyst(ds).ReferencedROINumber = 3

    back = read_rtstruct(mutated(renumber), volume)
    expected = labels.array.copy()
    expected[expected == 7] = 1
    np.testing.assert_array_equal(back.array, expected)
    assert back.label_names == {3: "liver", 1: "cyst"}
    (note,) = back.metadata["warnings"]
    assert 'ROI "cyst" (number 3) is read as label 1: ROI "liver" (number 3) has the same' in note


def test_contours_naming_no_roi_are_left_out_and_counted(written):
    volume, labels, mutated = written
    back = read_rtstruct(mutated(lambda ds: delattr(_cyst(ds), "ReferencedROINumber")), volume)
    np.testing.assert_array_equal(back.array, np.where(labels.array == 3, 3, 0))
    assert back.metadata["warnings"] == [
        "contour set 2 of the file names no ROI: its 3 contour(s) were left out"
    ]


def test_overlapping_rois_are_reported(written):
    volume, labels, mutated = written

    def overlap(ds: Dataset) -> None:
        _cyst(ds).ContourSequence = ds.ROIContourSequence[0].ContourSequence

    back = read_rtstruct(mutated(overlap), volume)
    liver = int(np.count_nonzero(labels.array == 3))
    assert back.metadata["warnings"] == [
        f'ROI "cyst" (number 7) overlaps ROIs drawn before it in {liver} voxel(s), which now '
        "carry its label (a label map holds one label per voxel)"
    ]


def test_a_file_with_nothing_drawable_is_refused_naming_each_roi(written):
    volume, _, mutated = written

    def flatten(ds: Dataset) -> None:
        for item in ds.ROIContourSequence:
            for contour in item.ContourSequence:
                contour.ContourGeometricType = "POINT"

    with pytest.raises(UnreadableFileError, match='no contour that can be drawn.*"liver".*"cyst"'):
        read_rtstruct(mutated(flatten), volume)


def test_structurally_broken_files_are_refused_in_words(tmp_path, written):
    volume, _, mutated = written
    with pytest.raises(UnreadableFileError, match="no readable ROIContourSequence"):
        read_rtstruct(mutated(lambda ds: delattr(ds, "ROIContourSequence")), volume)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(UnreadableFileError, match='"junk.dcm": it is not a readable DICOM'):
        read_rtstruct(junk, volume)


def test_a_truncated_file_is_refused_not_read_in_part(tmp_path, written):
    volume, _, mutated = written
    whole = mutated(lambda ds: None).read_bytes()
    cut = tmp_path / "cut.dcm"
    # pydicom reads this without a word, giving fewer contours than were written.
    cut.write_bytes(whole[: len(whole) * 3 // 4])
    with pytest.raises(UnreadableFileError, match='"cut.dcm": the file is truncated'):
        read_rtstruct(cut, volume)

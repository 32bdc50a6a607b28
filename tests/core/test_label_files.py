"""core.io.labels: which files open as label maps, and the label names a header stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.dicom_seg import read_dicom_seg
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.labels import (
    MAX_VALUES_NAMED,
    MAX_VALUES_UNNAMED,
    as_label_map,
    header_label_names,
    looks_like_labels,
    read_segmentation,
    sidecar_of,
    stored_segments,
)
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.writing import label_sidecar, write_label_map, write_sidecar
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap, Volume


def _volume(values: int, dtype=np.uint8, name: str = "scan", offset: int = 0) -> Volume:
    array = (np.arange(20 * 30 * 40) % values + offset).astype(dtype).reshape(20, 30, 40)
    return Volume(array, Geometry(), {"name": name, "source": f"{name}.nii.gz"})


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        (_volume(2), True),  # a binary mask, whatever its name
        (_volume(MAX_VALUES_UNNAMED), True),
        (_volume(MAX_VALUES_UNNAMED + 1), False),  # 17 grey levels, no hint: an image
        (_volume(118, name="example_seg"), True),  # TotalSegmentator's 117 classes
        (_volume(MAX_VALUES_NAMED, name="brain_label"), True),
        (_volume(255, name="mask_applied"), False),  # an 8-bit scan named "mask"
        (_volume(3000, np.int16, offset=-1024, name="ct_seg"), False),  # CT: negative HU
        (_volume(5, np.int16, offset=-1), False),  # negative labels are not labels
        (_volume(4, np.float32, name="seg"), True),  # MONAI's float32 masks, named so
        (_volume(4, np.float32, name="scan"), False),  # floats without a name: an image
        (Volume(np.full((4, 5, 6), 0.5, np.float32), Geometry(), {"name": "seg"}), False),
    ],
)
def test_looks_like_labels(volume, expected):
    assert looks_like_labels(volume) is expected


def test_float_masks_become_integer_label_maps():
    volume = _volume(4, np.float32, name="liver_seg")
    label_map = as_label_map(volume)
    assert label_map.array.dtype == np.uint8
    np.testing.assert_array_equal(label_map.array, volume.array)


def test_four_dimensional_images_are_never_labels():
    assert not looks_like_labels(Volume(np.zeros((2, 3, 4, 5), np.uint8), Geometry(), {}))


def test_segment_names_round_trip_through_nrrd(tmp_path):
    names = {1: "liver", 7: "tumour, core", 300: "vessel"}
    labels = LabelMap(np.array([[[0, 1], [7, 300]]], np.int16), Geometry(), {}, names)
    path = write_label_map(labels, tmp_path / "organs.seg.nrrd")
    assert header_label_names(path) == names
    nifti = write_label_map(labels, tmp_path / "organs.nii.gz")
    assert header_label_names(nifti) == {}


#: Segments as the segment list keeps them: colour (0..1 RGB), status, lock.
SEGMENTS = {
    1: {"color": [0.8, 0.25, 0.1], "status": "done", "locked": True},
    7: {"color": [0.0, 0.5, 1.0], "status": "in progress"},
    300: {"status": "not started"},
}
NAMES = {1: "liver", 7: "tumour, core", 300: "vessel"}


def _organs() -> LabelMap:
    array = np.array([[[0, 1], [7, 300]]], np.int16)
    return LabelMap(array, Geometry(), {"segments": SEGMENTS}, NAMES)


def test_segment_colours_statuses_and_locks_round_trip_through_nrrd(tmp_path):
    path = write_label_map(_organs(), tmp_path / "organs.seg.nrrd")
    names, segments = stored_segments(path)
    assert names == NAMES
    assert segments[1]["status"] == "done" and segments[1]["locked"] is True
    assert segments[7] == {"color": pytest.approx([0.0, 0.5, 1.0]), "status": "in progress"}
    assert segments[300] == {"status": "not started"}
    assert segments[1]["color"] == pytest.approx([0.8, 0.25, 0.1])


def test_nrrd_segment_fields_are_slicers(tmp_path):
    """3D Slicer reads Segment<i>_Color as three 0..1 numbers and the status as a tag."""
    path = write_label_map(_organs(), tmp_path / "organs.seg.nrrd")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("Segment0_LabelValue") == "1"
    assert [float(c) for c in reader.GetMetaData("Segment0_Color").split()] == pytest.approx(
        [0.8, 0.25, 0.1]
    )
    assert "Segmentation.Status:completed|" in reader.GetMetaData("Segment0_Tags")
    assert "Segmentation.Status:inprogress|" in reader.GetMetaData("Segment1_Tags")


def test_segments_round_trip_through_the_sidecar(tmp_path):
    labels = _organs()
    mask = write_label_map(labels, tmp_path / "organs.nii.gz")
    sidecar = label_sidecar(labels, input_name="ct.nii.gz", outputs={"labels": mask.name})
    write_sidecar(sidecar, sidecar_of(mask))
    assert json.loads(sidecar_of(mask).read_text())["segments"]["1"]["locked"] is True
    read = read_segmentation(mask)
    assert read.label_names == NAMES
    assert read.metadata["segments"] == SEGMENTS


def test_sidecar_fields_of_the_wrong_type_are_left_out(tmp_path):
    mask = write_label_map(_organs(), tmp_path / "organs.nii.gz")
    bad = {"1": {"color": "red", "status": "finished", "locked": "yes"}, "x": {}, "7": []}
    sidecar_of(mask).write_text(json.dumps({"label_names": {"1": "liver"}, "segments": bad}))
    assert stored_segments(mask) == ({1: "liver"}, {})


def test_segment_colours_round_trip_through_dicom_seg(tmp_path):
    """Names and colours travel in DICOM-SEG; locks and status have no standard attribute."""
    folder = tmp_path / "series"
    write_series(folder, np.zeros((3, 8, 6), dtype=np.int16))
    scan = read_volume(folder)
    array = np.zeros((3, 8, 6), np.uint8)
    array[1, 2:5, 1:3], array[2, 4:7, 3:5] = 1, 7
    labels = LabelMap(array, scan.geometry, {}, {1: "liver", 7: "tumour"})
    colors = {1: (0.8, 0.25, 0.1), 7: (0.0, 0.5, 1.0)}
    config = ExportConfig(format="dicom-seg", dicom=DicomExportConfig())
    out = tmp_path / "organs.dcm"
    run_job(export_job(labels, out, config, {}, folder, colors=colors))
    read = read_dicom_seg(out, scan)
    assert read.label_names == {1: "liver", 7: "tumour"}
    for value, rgb in colors.items():
        # CIE Lab is stored as 16-bit integers: one 8-bit RGB step is the round trip's bound.
        assert read.metadata["segments"][value]["color"] == pytest.approx(rgb, abs=1 / 255)

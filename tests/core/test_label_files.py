"""core.io.labels: which files open as label maps, and the label names a header stores."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.geometry import Geometry
from napari_medai.core.io.labels import (
    MAX_VALUES_NAMED,
    MAX_VALUES_UNNAMED,
    as_label_map,
    header_label_names,
    looks_like_labels,
)
from napari_medai.core.io.writing import write_label_map
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

"""Every readable real file, opened through napari's own API, lands where its file says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from napari.components import ViewerModel

#: Files SimpleITK reads directly: its physical points are the truth.
SITK_FILES = [
    "totalsegmentator/example_ct_sm.nii.gz",
    "totalsegmentator/example_ct.nii.gz",
    "totalsegmentator/example_mr_sm.nii.gz",
    "totalsegmentator/example_seg.nii.gz",
    "totalsegmentator/example_seg_dicom.nii.gz",
    "totalsegmentator/pulmonary_report/ct_cropped.nii.gz",
    "totalsegmentator/pulmonary_report/heart.nii.gz",
    "pyradiomics/brain2_image.nrrd",
    "pyradiomics/breast1_image.nrrd",
    "pyradiomics/prostate_phantom_subvolume.nrrd",
    "i2nii/mha.mha",
    "i2nii/nrrd.nhdr",
    "nifti_nimh/avg152T1_LR_nifti.nii.gz",
    "nifti_nimh/avg152T1_RL_nifti.nii.gz",
    "nifti_nimh/zstat1.nii.gz",
    "nifti_nimh/minimal.nii.gz",
    "nifti_nimh/minimal.hdr.gz",
    "niivue/lesion.nii.gz",
    "pyradiomics/brain2_label.nrrd",
    "totalsegmentator/pulmonary_report/pulmonary_artery.nii.gz",
    "niivue/FLAIR.nii.gz",
    "niivue/FLAIR.nrrd",
]

#: DICOM sources on a regular grid: each file's own header is the truth.
DICOM_SOURCES = [
    "totalsegmentator/example_ct_dicom",
    "pydicom_wheel/CT_small",
    "pydicom_wheel/MR_small",
    "pydicom_wheel/MR_small_RLE",
    "pydicom_wheel/MR_small_jp2klossless",
]


def _open(path: Path):
    [layer] = ViewerModel().open(str(path), plugin="napari-medai")
    return layer


def _random_indices(shape, count=200, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, shape, size=(count, len(shape)))


@pytest.mark.parametrize("relative", SITK_FILES)
def test_file_voxels_land_where_simpleitk_says(shared_data, relative):
    path = shared_data / relative
    layer = _open(path)
    truth = sitk.ReadImage(str(path))
    for index in _random_indices(layer.data.shape[-3:]):
        expected = truth.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])[::-1]
        np.testing.assert_allclose(layer.data_to_world(index), expected, atol=1e-4)


def _header_world_point(header: pydicom.Dataset, row: int, column: int) -> np.ndarray:
    """LPS point (x, y, z) of a pixel from the slice's own IPP, IOP and PixelSpacing."""
    orientation = np.array(header.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    return (
        np.array(header.ImagePositionPatient, dtype=float)
        + column * column_spacing * orientation[:3]
        + row * row_spacing * orientation[3:]
    )


@pytest.mark.parametrize("relative", DICOM_SOURCES)
def test_dicom_voxels_land_where_their_headers_say(shared_data, relative):
    path = shared_data / relative
    layer = _open(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    normal = np.cross(*np.reshape(np.array(headers[0].ImageOrientationPatient, float), (2, 3)))
    headers.sort(key=lambda h: float(np.dot(normal, np.array(h.ImagePositionPatient, float))))
    assert layer.data.shape[-3:] == (len(headers), headers[0].Rows, headers[0].Columns)
    for slice_index, row, column in _random_indices(layer.data.shape[-3:]):
        expected = _header_world_point(headers[slice_index], row, column)[::-1]
        world = layer.data_to_world([slice_index, row, column])
        np.testing.assert_allclose(world, expected, atol=1e-4)


def test_left_right_flipped_templates_land_identically(shared_data):
    lr = _open(shared_data / "nifti_nimh/avg152T1_LR_nifti.nii.gz")
    rl = _open(shared_data / "nifti_nimh/avg152T1_RL_nifti.nii.gz")
    for index in _random_indices(lr.data.shape):
        world = lr.data_to_world(index)
        other = np.round(rl.world_to_data(world)).astype(int)
        assert lr.data[tuple(index)] == rl.data[tuple(other)]


def test_tilted_series_opens_with_a_warning(shared_data):
    layer = _open(shared_data / "dcm_qa_ct/GE_tilt_varspacing")
    warnings = " ".join(layer.metadata["napari_medai"]["provenance"]["warnings"])
    assert "tilt" in warnings.lower()
    assert "spac" in warnings.lower()


def test_ct_opens_with_a_soft_tissue_window(shared_data):
    layer = _open(shared_data / "totalsegmentator/example_ct_sm.nii.gz")
    low, high = layer.contrast_limits
    assert (low + high) / 2 == pytest.approx(40, abs=30)
    assert high - low == pytest.approx(400, abs=100)

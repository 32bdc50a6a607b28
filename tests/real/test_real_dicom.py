"""The DICOM reader on real third-party files from ../shared/data.

Truth is each file's own header (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing) and pixels, read with pydicom, and grids other tools wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.io.dicom import read_dicom_job
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import volume_from_sitk

pytestmark = pytest.mark.real


def read(path: Path):
    return run_job(read_dicom_job(path))


def header_world(dataset, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """World (x, y, z) LPS of pixels from one file's own header."""
    iop = np.array(dataset.ImageOrientationPatient, dtype=float)
    ipp = np.array(dataset.ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    return ipp + np.outer(columns * column_spacing, iop[:3]) + np.outer(rows * row_spacing, iop[3:])


def continuous_index(volume, xyz: np.ndarray) -> np.ndarray:
    """Fractional (z, y, x) indices of world (x, y, z) points in ``volume``."""
    geometry = volume.geometry
    matrix = geometry.direction @ np.diag(geometry.spacing)
    return np.linalg.solve(matrix, (xyz[:, ::-1] - geometry.origin).T).T


def sample(volume, xyz: np.ndarray) -> np.ndarray:
    """Trilinear value of ``volume`` at world points (boundary round-off clipped)."""
    index = continuous_index(volume, xyz)
    upper = np.array(volume.array.shape) - 1
    index = np.where((index > -1e-6) & (index < upper + 1e-6), np.clip(index, 0, upper), index)
    return ndimage.map_coordinates(volume.array.astype(np.float32), index.T, order=1, cval=np.nan)


def test_jpeg2000_ct_series_geometry_and_hu(shared_data):
    folder = shared_data / "totalsegmentator" / "example_ct_dicom"
    volume = read(folder)
    assert volume.array.shape == (20, 512, 512)
    assert volume.metadata["modality"] == "CT" and volume.metadata["warnings"] == []
    assert -1100 <= volume.array.min() <= -900 and 500 <= volume.array.max() <= 4000
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    normal = np.cross(*np.reshape(np.array(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda ds: np.array(ds.ImagePositionPatient, float) @ normal)
    rng = np.random.default_rng(0)
    index = np.column_stack([rng.integers(0, n, 200) for n in volume.array.shape])
    truth = np.array(
        [header_world(datasets[k], np.array([i]), np.array([j]))[0] for k, i, j in index]
    )
    np.testing.assert_allclose(volume.geometry.index_to_world(index)[:, ::-1], truth, atol=1e-4)
    for k in (0, 7, 19):
        hu = datasets[k].pixel_array * float(datasets[k].RescaleSlope) + float(
            datasets[k].RescaleIntercept
        )
        np.testing.assert_array_equal(volume.array[k], hu)


def test_jpeg2000_ct_series_lines_up_with_its_organ_map(shared_data):
    volume = read(shared_data / "totalsegmentator" / "example_ct_dicom")
    labels = volume_from_sitk(
        sitk.ReadImage(str(shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz"))
    )
    assert labels.array.shape == volume.array.shape
    rng = np.random.default_rng(1)
    index = np.column_stack([rng.integers(0, n, 200) for n in labels.array.shape])
    ours = continuous_index(volume, labels.geometry.index_to_world(index)[:, ::-1])
    flipped = index * [1, -1, 1] + [0, volume.array.shape[1] - 1, 0]
    np.testing.assert_allclose(ours, flipped, atol=1e-4)
    liver = volume.array[:, ::-1, :][labels.array == 5]
    assert liver.size > 1000 and 20 <= np.median(liver) <= 150


def test_gantry_tilt_with_uneven_gaps_is_resampled_where_headers_say(shared_data):
    folder = shared_data / "dcm_qa_ct" / "GE_tilt_varspacing"
    volume = read(folder)
    (warning,) = volume.metadata["warnings"]
    assert "gantry tilt of 18.5 degrees" in warning
    assert "unevenly spaced: 1.1 to 7.0 mm" in warning and "resampled" in warning
    assert volume.geometry.is_orthonormal
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    naive = volume_from_sitk(reader.Execute())
    rng = np.random.default_rng(2)
    ours, stacked = [], []
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        original = dataset.pixel_array * float(dataset.RescaleSlope) + float(
            dataset.RescaleIntercept
        )
        rows, columns = rng.integers(0, 512, 40), rng.integers(0, 512, 40)
        xyz = header_world(dataset, rows, columns)
        ours.append(sample(volume, xyz) - original[rows, columns])
        stacked.append(sample(naive, xyz) - original[rows, columns])
    ours, stacked = np.abs(np.concatenate(ours)), np.abs(np.concatenate(stacked))
    assert not np.isnan(ours).any()
    assert np.median(ours) < 5 and np.percentile(ours, 90) < 100
    assert np.nanpercentile(stacked, 90) > 5 * np.percentile(ours, 90)


def test_zip_with_macos_forks_matches_the_mha_export(shared_data):
    volume = read(shared_data / "i2nii" / "DICOM.zip")
    reference = volume_from_sitk(sitk.ReadImage(str(shared_data / "i2nii" / "mha.mha")))
    assert volume.array.shape == reference.array.shape == (37, 64, 64)
    assert volume.metadata["modality"] == "MR" and volume.metadata["source"] == "DICOM.zip"
    index = np.argwhere(np.ones(reference.array.shape, bool))[::37]
    ours = continuous_index(volume, reference.geometry.index_to_world(index)[:, ::-1])
    nearest = np.rint(ours).astype(int)
    np.testing.assert_allclose(ours, nearest, atol=1e-3)
    np.testing.assert_array_equal(volume.array[tuple(nearest.T)], reference.array[tuple(index.T)])


@pytest.mark.parametrize("name", ["CT_small", "MR_small", "MR_small_RLE", "MR_small_jp2klossless"])
def test_single_file_objects_open_as_one_slice(shared_data, name):
    path = shared_data / "pydicom_wheel" / name / f"{name}.dcm"
    volume = read(path)
    dataset = pydicom.dcmread(path)
    assert volume.array.shape == (1, dataset.Rows, dataset.Columns)
    expected = dataset.pixel_array * float(dataset.get("RescaleSlope", 1)) + float(
        dataset.get("RescaleIntercept", 0)
    )
    np.testing.assert_array_equal(volume.array[0], expected)
    index = np.array([[0, 0, 0], [0, dataset.Rows - 1, 5]])
    truth = header_world(dataset, index[:, 1], index[:, 2])
    np.testing.assert_allclose(volume.geometry.index_to_world(index)[:, ::-1], truth, atol=1e-6)
    np.testing.assert_allclose(volume.geometry.spacing[0], float(dataset.SliceThickness))


def test_segmentation_object_is_refused_clearly(shared_data):
    path = shared_data / "pydicom_wheel" / "liver_1frame" / "liver_1frame.dcm"
    with pytest.raises(UnreadableFileError, match="liver_1frame.dcm is a DICOM segmentation"):
        read(path)

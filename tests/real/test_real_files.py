"""core.io.reading on real third-party files in ../shared/data (skipped when absent).

Truth is SimpleITK's own geometry of each file (nibabel's for FreeSurfer .mgz,
which SimpleITK cannot read), and the files' stated relations to each other.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.volume import Volume

pytestmark = pytest.mark.real

HAVE_DICOM = importlib.util.find_spec("napari_medai.core.io.dicom") is not None

#: Every readable non-DICOM file of the data README's table.
READABLE = [
    "totalsegmentator/example_ct_sm.nii.gz",
    "totalsegmentator/example_ct.nii.gz",
    "totalsegmentator/example_seg.nii.gz",
    "totalsegmentator/example_seg_dicom.nii.gz",
    "totalsegmentator/example_mr_sm.nii.gz",
    "totalsegmentator/example_seg_mr.nii.gz",
    "totalsegmentator/pulmonary_report/ct_cropped.nii.gz",
    "totalsegmentator/pulmonary_report/heart.nii.gz",
    "totalsegmentator/pulmonary_report/pulmonary_artery.nii.gz",
    "pyradiomics/brain2_image.nrrd",
    "pyradiomics/brain2_label.nrrd",
    "pyradiomics/breast1_image.nrrd",
    "pyradiomics/breast1_label.nrrd",
    "pyradiomics/prostate_phantom_subvolume.nrrd",
    "pyradiomics/prostate_phantom_subvolume-label.nrrd",
    "i2nii/mha.mha",
    "i2nii/nrrd.nhdr",
    "i2nii/mgh.mgz",
    "nifti_nimh/avg152T1_LR_nifti.nii.gz",
    "nifti_nimh/avg152T1_RL_nifti.nii.gz",
    "nifti_nimh/minimal.nii.gz",
    "nifti_nimh/minimal.hdr.gz",
    "nifti_nimh/zstat1.nii.gz",
    "niivue/FLAIR.nii.gz",
    "niivue/FLAIR.nrrd",
    "niivue/lesion.nii.gz",
]


def truth_world_and_voxels(path: Path, index_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (z, y, x) LPS points of voxels, and the whole array, by SimpleITK (or nibabel)."""
    if path.suffix == ".mgz":
        loaded = nib.load(path)
        ras = index_zyx[:, ::-1] @ loaded.affine[:3, :3].T + loaded.affine[:3, 3]
        lps = ras * [-1.0, -1.0, 1.0]
        return lps[:, ::-1], np.asarray(loaded.dataobj).transpose(2, 1, 0)
    image = sitk.ReadImage(str(path))
    world = [
        image.TransformIndexToPhysicalPoint([int(i) for i in row[::-1]])[::-1] for row in index_zyx
    ]
    return np.array(world), sitk.GetArrayFromImage(image)


def mapped_onto(moving: Volume, fixed: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``moving``'s intensities at every ``fixed`` voxel centre, with an inside mask.

    Only for grids whose voxel centres coincide (checked): no interpolation.
    """
    index = np.argwhere(np.ones(fixed.spatial_shape, bool))
    world = fixed.geometry.index_to_world(index)
    inverse = np.linalg.inv(moving.geometry.affine())
    continuous = world @ inverse[:3, :3].T + inverse[:3, 3]
    rounded = np.rint(continuous).astype(int)
    np.testing.assert_allclose(continuous, rounded, atol=1e-3)
    inside = np.all((rounded >= 0) & (rounded < moving.spatial_shape), axis=1)
    values = np.zeros(len(index), moving.array.dtype)
    values[inside] = moving.array[tuple(rounded[inside].T)]
    return values.reshape(fixed.spatial_shape), inside.reshape(fixed.spatial_shape)


@pytest.mark.parametrize("relative", READABLE)
def test_world_points_match_the_file(shared_data, relative):
    path = shared_data / relative
    volume = read_volume(path)
    rng = np.random.default_rng(zlib.crc32(relative.encode()))
    index = np.stack([rng.integers(0, n, 200) for n in volume.spatial_shape], axis=1)

    world, voxels = truth_world_and_voxels(path, index)

    np.testing.assert_allclose(volume.geometry.index_to_world(index), world, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(volume.array, voxels)
    assert volume.metadata["source"] == path.name


def test_left_right_flipped_templates_land_identically(shared_data):
    folder = shared_data / "nifti_nimh"
    lr = read_volume(folder / "avg152T1_LR_nifti.nii.gz")
    rl = read_volume(folder / "avg152T1_RL_nifti.nii.gz")
    assert not np.array_equal(lr.array, rl.array)  # stored in opposite orders

    values, inside = mapped_onto(rl, lr)

    assert inside.all()
    np.testing.assert_array_equal(values, lr.array)


def test_flair_nifti_and_nrrd_agree(shared_data):
    nifti = read_volume(shared_data / "niivue/FLAIR.nii.gz")
    nrrd = read_volume(shared_data / "niivue/FLAIR.nrrd")
    assert nifti.geometry.is_close(nrrd.geometry, 1e-4)
    assert not np.allclose(nifti.geometry.direction, np.diag(np.diag(nifti.geometry.direction)))
    np.testing.assert_array_equal(nifti.array, nrrd.array)


def test_i2nii_formats_agree(shared_data):
    folder = shared_data / "i2nii"
    mha = read_volume(folder / "mha.mha")
    for name in ("nrrd.nhdr", "mgh.mgz"):
        other = read_volume(folder / name)
        assert other.geometry.is_close(mha.geometry, 1e-4), name
        np.testing.assert_array_equal(other.array, mha.array)


@pytest.mark.skipif(not HAVE_DICOM, reason="core/dicom.py is not written yet")
def test_i2nii_dicom_zip_agrees_with_the_other_formats(shared_data):
    folder = shared_data / "i2nii"
    mha = read_volume(folder / "mha.mha")
    dicom = read_volume(folder / "DICOM.zip")

    values, inside = mapped_onto(dicom, mha)

    assert inside.all()
    np.testing.assert_array_equal(values, mha.array)


def test_heart_mask_is_resampled_onto_the_ct_grid(shared_data):
    folder = shared_data / "totalsegmentator/pulmonary_report"
    ct = read_volume(folder / "ct_cropped.nii.gz")
    heart = read_volume(folder / "heart.nii.gz")
    assert heart.spatial_shape != ct.spatial_shape

    label_map = read_label_map(folder / "heart.nii.gz", reference=ct)

    assert label_map.spatial_shape == ct.spatial_shape
    assert label_map.geometry == ct.geometry
    # Same spacing and direction: the CT grid is a crop of the heart grid.
    start = np.linalg.solve(
        heart.geometry.direction @ np.diag(heart.geometry.spacing),
        ct.geometry.origin - heart.geometry.origin,
    )
    assert np.allclose(start, np.rint(start), atol=1e-3)
    z, y, x = np.rint(start).astype(int)
    nz, ny, nx = ct.spatial_shape
    expected = heart.array[z : z + nz, y : y + ny, x : x + nx]
    np.testing.assert_array_equal(label_map.array, expected)
    assert label_map.array.any()
    assert any("resampled" in warning for warning in label_map.metadata["warnings"])


def test_pulmonary_artery_on_the_ct_grid_is_not_resampled(shared_data):
    folder = shared_data / "totalsegmentator/pulmonary_report"
    ct = read_volume(folder / "ct_cropped.nii.gz")
    label_map = read_label_map(folder / "pulmonary_artery.nii.gz", reference=ct)
    np.testing.assert_array_equal(
        label_map.array,
        sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pulmonary_artery.nii.gz"))),
    )
    assert label_map.metadata["warnings"] == []


@pytest.mark.skipif(not HAVE_DICOM, reason="core/dicom.py is not written yet")
def test_las_organ_map_is_resampled_onto_the_dicom_grid(shared_data):
    folder = shared_data / "totalsegmentator"
    ct = read_volume(folder / "example_ct_dicom")
    seg = read_volume(folder / "example_seg_dicom.nii.gz")

    label_map = read_label_map(folder / "example_seg_dicom.nii.gz", reference=ct)

    expected, inside = mapped_onto(seg, ct)
    assert inside.all()
    np.testing.assert_array_equal(label_map.array, expected)
    assert 5 in label_map.array  # the liver


def test_minimal_gzipped_pair_opens_like_the_single_file(shared_data):
    # The data README expects SimpleITK to fail on the gzipped .hdr/.img pair;
    # SimpleITK 2.5 reads it, so it opens, with the missing-orientation warning.
    folder = shared_data / "nifti_nimh"
    pair = read_volume(folder / "minimal.hdr.gz")
    single = read_volume(folder / "minimal.nii.gz")
    assert pair.geometry == single.geometry
    np.testing.assert_array_equal(pair.array, single.array)
    for volume, name in ((pair, "minimal.hdr.gz"), (single, "minimal.nii.gz")):
        assert len(volume.metadata["warnings"]) == 1
        assert name in volume.metadata["warnings"][0]


def test_zstat_has_a_scanner_transform_and_no_warning(shared_data):
    volume = read_volume(shared_data / "nifti_nimh/zstat1.nii.gz")
    assert volume.metadata["warnings"] == []
    assert volume.array.dtype == np.float32
    assert volume.modality == ""


def test_int32_ct_stays_integer_and_is_recognised(shared_data):
    volume = read_volume(shared_data / "totalsegmentator/example_ct.nii.gz")
    assert volume.array.dtype == np.int32
    assert volume.modality == "CT"
    assert volume.metadata["name"] == "example_ct"
    assert read_volume(shared_data / "totalsegmentator/example_mr_sm.nii.gz").modality == ""

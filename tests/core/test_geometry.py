"""Geometry and the single SimpleITK conversion pair."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.errors import GeometryError
from napari_medai.core.geometry import Geometry, lps_from_ras, ras_from_lps
from napari_medai.core.volume import LabelMap, Volume, volume_from_sitk, volume_to_sitk


def _oblique_image() -> sitk.Image:
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 3.0))
    image.SetOrigin((-12.5, 40.0, 7.25))
    angle = np.deg2rad(18.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    image.SetDirection((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel().tolist())
    return image


def test_index_to_world_matches_simpleitk_for_an_oblique_flipped_grid():
    image = _oblique_image()
    volume = volume_from_sitk(image)
    assert volume.array.shape == (4, 5, 6)
    rng = np.random.default_rng(0)
    indices = rng.integers(0, volume.spatial_shape, size=(200, 3))
    world = volume.geometry.index_to_world(indices)
    for index, point in zip(indices, world, strict=True):
        expected = image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])[::-1]
        np.testing.assert_allclose(point, expected, atol=1e-9)


def test_sitk_round_trip_keeps_geometry_and_voxels():
    image = _oblique_image()
    back = volume_to_sitk(volume_from_sitk(image))
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_affine_round_trip_and_dict_round_trip():
    geometry = volume_from_sitk(_oblique_image()).geometry
    assert Geometry.from_affine(geometry.affine()) == geometry
    assert Geometry.from_dict(geometry.to_dict()) == geometry
    moved = Geometry(geometry.spacing, geometry.origin + [0, 0, 1e-3], geometry.direction)
    assert moved != geometry


def test_sheared_grid_is_exact_in_napari_but_refused_by_sitk():
    tilt = np.deg2rad(20.0)
    direction = np.array([[np.cos(tilt), 0, 0], [np.sin(tilt), 1, 0], [0, 0, 1]])
    geometry = Geometry((2.0, 1.0, 1.0), (0, 0, 0), direction)
    assert not geometry.is_orthonormal
    np.testing.assert_allclose(
        geometry.index_to_world([1, 0, 0])[0], [2 * np.cos(tilt), 2 * np.sin(tilt), 0]
    )
    with pytest.raises(GeometryError, match="sheared"):
        volume_to_sitk(Volume(np.zeros((2, 2, 2)), geometry))


def test_voxel_volume_in_millilitres():
    assert Geometry((2.0, 0.5, 0.5)).voxel_volume_ml() == pytest.approx(0.0005)


def test_label_map_requires_integers_and_3d():
    with pytest.raises(TypeError):
        LabelMap(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        LabelMap(np.zeros((2, 2, 2, 2), dtype=np.uint8))


def test_vector_pixels_become_a_leading_channel_axis():
    image = sitk.Compose([sitk.Image(6, 5, 4, sitk.sitkFloat32)] * 2)
    volume = volume_from_sitk(image)
    assert volume.array.shape == (2, 4, 5, 6)
    assert volume.spatial_shape == (4, 5, 6)


def test_spacing_must_be_positive():
    with pytest.raises(ValueError):
        Geometry((0.0, 1.0, 1.0))


def test_ras_affine_is_what_a_nifti_writer_stores(tmp_path):
    """SimpleITK writes the grid to NIfTI in RAS; nibabel reads that affine back."""
    image = _oblique_image()
    sitk.WriteImage(image, str(tmp_path / "oblique.nii"))
    stored = nibabel.load(tmp_path / "oblique.nii").affine
    geometry = volume_from_sitk(image).geometry
    # NIfTI keeps the sform in float32: about 1e-7 relative, so 1e-5 mm over this grid.
    np.testing.assert_allclose(geometry.ras_affine(), stored, atol=1e-5)
    assert Geometry.from_ras_affine(stored).is_close(geometry, 1e-5)


def test_from_ras_affine_places_voxels_where_nibabel_does():
    """A sheared, flipped RAS affine: every voxel lands on nibabel's point, x and y negated."""
    affine = np.array([[-2.0, 0.8, 0, 5], [0, 3, 0.5, -6], [0.2, 0, 4, 7], [0, 0, 0, 1]])
    geometry = Geometry.from_ras_affine(affine)
    index_xyz = np.array([[0, 0, 0], [5, 4, 3], [2, 7, 1]])
    ras = nibabel.affines.apply_affine(affine, index_xyz)
    lps_zyx = np.column_stack([ras[:, 2], -ras[:, 1], -ras[:, 0]])
    np.testing.assert_allclose(geometry.index_to_world(index_xyz[:, ::-1]), lps_zyx, atol=1e-12)
    np.testing.assert_allclose(geometry.ras_affine(), affine, atol=1e-12)


def test_lps_ras_flip_negates_x_and_y_and_undoes_itself():
    matrix = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(lps_from_ras(matrix)[:, 0], [0.0, -4.0, 8.0])
    np.testing.assert_array_equal(ras_from_lps(lps_from_ras(matrix)), matrix)
    assert lps_from_ras(matrix) is not matrix and matrix[1, 0] == 4.0

"""Mapping into a model's space and back, and intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.geometry import Geometry
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.preprocessing import (
    Normaliser,
    SourceGrid,
    model_space,
    to_model_space,
)
from napari_medai.core.phantom import phantom_geometry
from napari_medai.core.volume import Volume


def make_card(**changes) -> ModelCard:
    fields = {
        "name": "tiny",
        "architecture": "UNet",
        "architecture_args": {},
        "label_names": {0: "background", 1: "organ"},
        "patch_size": [8, 16, 16],
        **changes,
    }
    return ModelCard(**fields)


def world_points(geometry: Geometry, shape) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return geometry.index_to_world(index.reshape(-1, 3)).reshape(*shape, 3)


GRADIENT = np.array([0.7, -1.3, 2.1])


def ramp(geometry: Geometry, shape) -> np.ndarray:
    """A linear function of world position, which linear interpolation reproduces exactly."""
    return (world_points(geometry, shape) @ GRADIENT + 5.0).astype(np.float32)


def test_no_spacing_or_orientation_means_no_copy(phantom):
    ct, _ = phantom
    space = model_space(ct, make_card())
    assert space.identity and space.shape == ct.spatial_shape and space.geometry == ct.geometry
    data = to_model_space(ct, make_card(), space)
    assert data.shape == (1, *ct.spatial_shape)
    assert np.shares_memory(data, ct.array)


def test_matching_spacing_and_orientation_is_the_identity():
    geometry = Geometry((3.0, 1.5, 1.25), (10.0, -4.0, 2.0), np.eye(3))
    volume = Volume(np.zeros((4, 6, 8), np.int16), geometry)
    card = make_card(orientation="LPS", spacing=[3.0, 1.5, 1.25])
    space = model_space(volume, card)
    assert space.identity
    assert np.shares_memory(to_model_space(volume, card, space), volume.array)


def test_reorientation_is_an_exact_axis_flip():
    geometry = Geometry((3.0, 2.0, 1.0), (5.0, -7.0, 11.0), np.eye(3))  # LPS
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = Volume(array, geometry)
    card = make_card(orientation="RAS")
    space = model_space(volume, card)
    assert not space.identity
    data = to_model_space(volume, card, space)
    # RAS from LPS: x and y axes reversed, z kept; values must be moved, not interpolated.
    np.testing.assert_array_equal(data[0], array[:, ::-1, ::-1])
    # ... and every model voxel sits at the same world point as the source voxel it holds.
    np.testing.assert_allclose(
        world_points(space.geometry, space.shape),
        world_points(geometry, array.shape)[:, ::-1, ::-1],
        atol=1e-9,
    )


def test_resampling_keeps_world_positions_both_ways():
    shape = (12, 20, 18)
    geometry = phantom_geometry(shape, (4.0, 3.0, 2.5))
    volume = Volume(ramp(geometry, shape), geometry)
    card = make_card(spacing=[2.5, 4.0, 3.5], orientation="RAS")
    space = model_space(volume, card)
    assert not space.identity
    assert np.allclose(space.geometry.spacing, card.spacing)
    extent = np.array(shape) * geometry.spacing
    assert np.all(
        np.abs(np.array(space.shape) * space.geometry.spacing - extent) <= space.geometry.spacing
    )
    centre = lambda g, s: g.index_to_world((np.array(s) - 1) / 2.0)[0]  # noqa: E731
    np.testing.assert_allclose(
        centre(space.geometry, space.shape), centre(geometry, shape), atol=1e-9
    )

    data = to_model_space(volume, card, space)
    assert data.dtype == np.float32 and data.shape == (1, *space.shape)
    inner = (slice(1, -1),) * 3  # the model grid's rim may lie just outside the source
    np.testing.assert_allclose(data[0][inner], ramp(space.geometry, space.shape)[inner], atol=1e-3)

    back = SourceGrid(space, geometry, shape).resample(ramp(space.geometry, space.shape))
    assert back.shape == shape
    np.testing.assert_allclose(back[inner], volume.array[inner], atol=1e-3)


def test_bad_orientation_and_sheared_grids_are_refused():
    volume = Volume(np.zeros((4, 5, 6), np.float32))
    with pytest.raises(MedaiError, match="orientation 'XYZ'"):
        model_space(volume, make_card(orientation="XYZ"))
    sheared = Geometry((1.0, 1.0, 1.0), (0, 0, 0), [[1, 0, 0], [0.2, 1, 0], [0, 0, 1]])
    with pytest.raises(GeometryError, match="sheared"):
        model_space(Volume(np.zeros((4, 5, 6), np.float32), sheared), make_card(spacing=[2, 2, 2]))


def run(normaliser: Normaliser, array: np.ndarray) -> np.ndarray:
    return normaliser(torch.from_numpy(array.astype(np.float32))[None]).numpy()[0]


def test_window_clips_and_scales():
    data = np.array([[[-500.0, -160.0, 40.0, 240.0, 900.0]]])[None]
    normaliser = Normaliser.from_card({"kind": "window", "low": -160, "high": 240}, data)
    np.testing.assert_allclose(run(normaliser, data)[0, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_percentile_uses_the_foreground():
    rng = np.random.default_rng(1)
    data = np.zeros((1, 10, 20, 20), np.float32)
    data[0, 2:8, 5:15, 5:15] = rng.normal(300.0, 50.0, size=(6, 10, 10))
    card_intensity = {"kind": "percentile", "low": 1.0, "high": 99.0}
    normaliser = Normaliser.from_card(card_intensity, data)
    foreground = data[data > 0]
    low, high = np.percentile(foreground.astype(np.float64), [1.0, 99.0])
    expected = (data - low) / (high - low)
    np.testing.assert_allclose(run(normaliser, data), expected, rtol=1e-4, atol=1e-4)
    assert normaliser.describe()[0] == pytest.approx({"low": low, "high": high})


def test_zscore_over_non_zero_voxels_keeps_zeros():
    rng = np.random.default_rng(2)
    data = np.zeros((1, 6, 12, 12), np.float32)
    data[0, 1:5, 2:10, 2:10] = rng.normal(80.0, 20.0, size=(4, 8, 8))
    normaliser = Normaliser.from_card({"kind": "zscore"}, data)
    inside = data != 0
    mean, std = data[inside].mean(dtype=np.float64), data[inside].std(dtype=np.float64)
    out = run(normaliser, data)
    np.testing.assert_allclose(out[inside], (data[inside] - mean) / std, rtol=1e-4, atol=1e-4)
    assert np.all(out[~inside] == 0)


def test_statistics_are_per_channel():
    rng = np.random.default_rng(3)
    data = np.stack([rng.normal(10.0, 2.0, (4, 8, 8)), rng.normal(-50.0, 9.0, (4, 8, 8))])
    normaliser = Normaliser.from_card({"kind": "zscore"}, data.astype(np.float32))
    out = normaliser(torch.from_numpy(data.astype(np.float32))[None]).numpy()[0]
    for channel in out:
        assert abs(channel.mean()) < 1e-4 and abs(channel.std() - 1.0) < 1e-3


def test_none_passes_values_through():
    data = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    normaliser = Normaliser.from_card({"kind": "none"}, data)
    np.testing.assert_array_equal(run(normaliser, data), data)


@pytest.mark.parametrize("code", ["LPS", "RAS", "RAI", "ASL"])
def test_the_reoriented_grid_is_simpleitks_without_a_full_size_image(code):
    # The model's grid comes from a 2x2x2 probe, not a reoriented scan-sized image (750 MB at
    # 512x512x1000); it must be the grid SimpleITK's DICOMOrient gives the whole scan.
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    from napari_medai.core.resample import reference_image
    from napari_medai.core.volume import volume_from_sitk

    rng = np.random.default_rng(0)
    for seed in range(30):
        rotation = Rotation.random(random_state=seed).as_matrix()
        if seed % 3 == 0:  # axis-aligned, with flips: the usual scanner grids
            rotation = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)
        geometry = Geometry(rng.uniform(0.5, 3, 3), rng.uniform(-100, 100, 3), rotation)
        shape = tuple(int(n) for n in rng.integers(2, 30, 3))
        card = make_card(orientation=code)
        space = model_space(Volume(np.zeros(shape, np.int16), geometry), card)
        whole = volume_from_sitk(sitk.DICOMOrient(reference_image(geometry, shape), code))
        assert space.shape == whole.spatial_shape
        assert space.geometry.is_close(whole.geometry, 1e-6)

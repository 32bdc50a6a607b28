"""Volumes <-> napari layers: world coordinates must be the physical ones."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels

from napari_medai._napari.layers import (
    image_layer_data,
    label_map_from_layer,
    labels_layer_data,
    volume_from_layer,
    world_geometry,
)
from napari_medai.core.volume import volume_from_sitk, volume_to_sitk


def _layer(data_tuple):
    data, kwargs, kind = data_tuple
    return {"image": Image, "labels": Labels}[kind](data, **kwargs)


def test_data_to_world_matches_simpleitk(phantom):
    volume, _ = phantom
    layer = _layer(image_layer_data(volume))
    image = volume_to_sitk(volume)
    rng = np.random.default_rng(1)
    for index in rng.integers(0, volume.spatial_shape, size=(200, 3)):
        expected = image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])[::-1]
        np.testing.assert_allclose(layer.data_to_world(index), expected, atol=1e-6)


def test_image_layer_round_trips_to_the_same_volume(phantom):
    volume, _ = phantom
    layer = _layer(image_layer_data(volume))
    back = volume_from_layer(layer)
    assert back.geometry == volume.geometry
    assert back.array is volume.array or np.array_equal(back.array, volume.array)
    assert layer.metadata["napari_medai"]["provenance"]["modality"] == "CT"


def test_labels_layer_keeps_names_and_grid(phantom):
    _, labels = phantom
    layer = _layer(labels_layer_data(labels))
    back = label_map_from_layer(layer)
    assert back.geometry == labels.geometry
    assert back.label_names == labels.label_names
    assert list(layer.features["name"])[1] == labels.label_names[1]


def test_moved_layer_uses_what_napari_shows(phantom):
    volume, _ = phantom
    layer = _layer(image_layer_data(volume))
    layer.translate = (0.0, 0.0, 10.0)
    assert volume_from_layer(layer).geometry == world_geometry(layer)
    assert volume_from_layer(layer).geometry != volume.geometry


def test_time_series_gets_a_unit_time_axis(phantom):
    volume, _ = phantom
    series = volume.with_array(np.stack([volume.array] * 2), channel_axis_name="time")
    layer = _layer(image_layer_data(series))
    assert layer.ndim == 4
    np.testing.assert_allclose(
        layer.data_to_world([1, 2, 3, 4])[1:], volume.geometry.index_to_world([2, 3, 4])[0]
    )
    assert layer.data_to_world([1, 0, 0, 0])[0] == pytest.approx(1.0)


def test_sitk_orientation_agrees_for_a_flipped_file(tmp_path):
    """A file stored right-to-left lands where SimpleITK says, not mirrored."""
    array = np.zeros((4, 5, 6), dtype=np.int16)
    array[1, 2, 0] = 100
    image = sitk.GetImageFromArray(array)
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    image.SetOrigin((30.0, -5.0, 2.0))
    layer = _layer(image_layer_data(volume_from_sitk(image, {"name": "flipped"})))
    expected = image.TransformIndexToPhysicalPoint((0, 2, 1))[::-1]
    np.testing.assert_allclose(layer.data_to_world((1, 2, 0)), expected)


def test_a_layer_with_plugin_metadata_but_no_geometry_has_no_stored_geometry():
    """GAN samples carry napari-medai metadata without a scan's grid: Export and Save
    must ask for one, not fail with KeyError('geometry')."""
    from napari_medai._napari.layers import METADATA_KEY, stored_geometry

    samples = Image(np.zeros((4, 8, 8)), metadata={METADATA_KEY: {"synthetic": True}})
    assert stored_geometry(samples) is None

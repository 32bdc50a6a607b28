"""The npe2 reader and writer through napari's own API."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_medai._napari.layers import image_layer_data
from napari_medai.core.volume import volume_to_sitk


@pytest.fixture
def phantom_file(phantom, tmp_path):
    volume, _ = phantom
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(path))
    return path


def _check_world(layer, image: sitk.Image, count: int = 200) -> None:
    rng = np.random.default_rng(7)
    shape = layer.data.shape[-3:]
    for index in rng.integers(0, shape, size=(count, 3)):
        expected = image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])[::-1]
        np.testing.assert_allclose(layer.data_to_world(index), expected, atol=1e-6)


def test_viewer_open_places_every_voxel(phantom_file):
    viewer = ViewerModel()
    [layer] = viewer.open(str(phantom_file), plugin="napari-medai")
    assert isinstance(layer, Image)
    _check_world(layer, sitk.ReadImage(str(phantom_file)))
    assert layer.name == "phantom"
    assert layer.contrast_limits == pytest.approx([-160.0, 240.0])
    assert [str(u) for u in layer.units] == ["millimeter"] * 3


def _nibabel_lps_affine(path) -> np.ndarray:
    """nibabel's RAS (x, y, z) affine as an LPS (z, y, x) one, for comparison."""
    ras = nib.load(str(path)).affine
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    flip = np.eye(4)[[2, 1, 0, 3]]
    return flip @ lps @ flip


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_new_labels_layer_saves_on_the_scan_grid(
    make_napari_viewer, phantom_file, tmp_path, suffix
):
    viewer = make_napari_viewer()
    [image_layer] = viewer.open(str(phantom_file), plugin="napari-medai")
    viewer.layers.selection.active = image_layer
    viewer._new_labels()  # what napari's "new labels layer" button does
    labels = viewer.layers[-1]
    labels.data[3:6, 10:20, 5:9] = 2
    labels.data[10, 30, 40] = 7
    out = tmp_path / f"mask{suffix}"
    written = labels.save(str(out), plugin="napari-medai")
    assert written == [str(out)]

    saved = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(phantom_file))
    assert saved.GetSize() == source.GetSize()
    np.testing.assert_allclose(saved.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(saved.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(saved.GetDirection(), source.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), labels.data)
    assert np.issubdtype(sitk.GetArrayFromImage(saved).dtype, np.integer)
    if suffix == ".nii.gz":
        nifti = nib.load(str(out))
        np.testing.assert_allclose(
            _nibabel_lps_affine(out), image_layer.affine.affine_matrix, atol=1e-5
        )
        np.testing.assert_array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), labels.data)


def test_extent_labels_are_resampled_onto_the_scan(make_napari_viewer, phantom_file, tmp_path):
    """Labels drawn on napari's axis-aligned extent grid export on the scan's grid."""
    viewer = make_napari_viewer()
    [image_layer] = viewer.open(str(phantom_file), plugin="napari-medai")
    extra = viewer.add_points([[0, 0, 0]])
    viewer.layers.selection = {image_layer, extra}
    viewer._new_labels()
    labels = viewer.layers[-1]
    assert labels.data.shape != image_layer.data.shape  # a different grid
    centre = np.array(image_layer.data.shape) // 2
    world = np.asarray(image_layer.data_to_world(centre))
    labels.data[tuple(np.round(labels.world_to_data(world)).astype(int))] = 3
    out = tmp_path / "extent.nii.gz"
    labels.save(str(out), plugin="napari-medai")
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert saved.shape == image_layer.data.shape
    hits = np.argwhere(saved == 3)
    assert len(hits) >= 1
    distance = np.linalg.norm(np.asarray(image_layer.data_to_world(hits.mean(axis=0))) - world)
    assert distance <= np.max(image_layer.scale) * 2


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    good = gzip.compress(b"\x5c\x01" + b"\x00" * 600)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good[: len(good) // 2])
    noise = tmp_path / "noise.nrrd"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    folder = tmp_path / "no_images"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    return [empty, truncated, noise, folder]


def test_bad_input_raises_clearly_and_keeps_layers(phantom, tmp_path):
    viewer = ViewerModel()
    data, kwargs, _ = image_layer_data(phantom[0])
    viewer.add_layer(Image(data, **kwargs))
    before = [layer.name for layer in viewer.layers]
    for path in _bad_inputs(tmp_path):
        with pytest.raises(Exception) as info:
            viewer.open(str(path), plugin="napari-medai")
        assert path.name in str(info.value)
        assert [layer.name for layer in viewer.layers] == before


def test_labels_layer_from_reader_metadata_writes_names(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medai", "phantom_ct")
    labels = next(layer for layer in viewer.layers if isinstance(layer, Labels))
    out = tmp_path / "organs.nrrd"
    labels.save(str(out), plugin="napari-medai")
    saved = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), labels.data)

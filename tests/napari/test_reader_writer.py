"""The npe2 reader and writer through napari's own API."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_medai._napari import reader, scan_grid, writer
from napari_medai._napari.layers import image_layer_data
from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.volume import LabelMap, volume_to_sitk


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
    assert written == [str(out), str(tmp_path / "mask.json")]

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


# --- masks open as labels ---------------------------------------------------------------


@pytest.fixture
def phantom_pair(phantom, tmp_path):
    """The phantom CT and its organ map saved as NIfTI on the same grid."""
    volume, labels = phantom
    ct = tmp_path / "phantom_ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(ct))
    seg = tmp_path / "phantom_seg.nii.gz"
    sitk.WriteImage(volume_to_sitk(labels), str(seg))
    return ct, seg


def test_segmentation_file_opens_as_labels_on_the_scan_grid(phantom_pair):
    ct, seg = phantom_pair
    viewer = ViewerModel()
    [image] = viewer.open(str(ct), plugin="napari-medai")
    [labels] = viewer.open(str(seg), plugin="napari-medai")
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert labels.metadata["napari_medai"]["geometry"] == image.metadata["napari_medai"]["geometry"]
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    _check_world(labels, sitk.ReadImage(str(seg)), count=20)


def test_slicer_segment_names_become_label_names(phantom, tmp_path):
    _, labels = phantom
    named = LabelMap(labels.array, labels.geometry, {}, {1: "liver", 2: "left kidney"})
    path = write_label_map(named, tmp_path / "organs.seg.nrrd")
    assert b"Segment0_Name:=liver" in path.read_bytes()[:2000]

    [layer] = ViewerModel().open(str(path), plugin="napari-medai")

    assert isinstance(layer, Labels)
    assert layer.metadata["napari_medai"]["label_names"] == {"1": "liver", "2": "left kidney"}
    names = dict(zip(layer.features["index"], layer.features["name"]))
    assert names[1] == "liver" and names[2] == "left kidney"


def test_open_segmentation_menu_opens_any_integer_file_as_labels(phantom, tmp_path, monkeypatch):
    """An 8-bit file with many values and no name hint is an image, unless asked."""
    volume, _ = phantom
    scan_like = volume.with_array((volume.array % 250).astype(np.uint8))
    path = tmp_path / "drawing.nii.gz"
    sitk.WriteImage(volume_to_sitk(scan_like), str(path))
    viewer = ViewerModel()
    [as_image] = viewer.open(str(path), plugin="napari-medai")
    assert isinstance(as_image, Image)

    monkeypatch.setattr(reader, "choose_segmentation_files", lambda: [str(path)])
    [as_labels] = reader.open_segmentation(viewer)

    assert isinstance(as_labels, Labels)
    np.testing.assert_allclose(as_labels.affine.affine_matrix, as_image.affine.affine_matrix)


# --- saving labels: which grid, and clear refusals ------------------------------------------


@pytest.fixture
def notes(monkeypatch):
    """Messages the writer shows as napari notifications."""
    shown: list[str] = []
    monkeypatch.setattr(scan_grid, "show_info", shown.append)
    monkeypatch.setattr(scan_grid, "show_warning", shown.append)
    return shown


@pytest.fixture
def viewer_with_ct(phantom_pair, monkeypatch):
    """A viewer (napari's model) holding the phantom CT, as the writer's current viewer."""
    viewer = ViewerModel()
    viewer.open(str(phantom_pair[0]), plugin="napari-medai")
    monkeypatch.setattr(writer.napari, "current_viewer", lambda: viewer)
    return viewer


def test_bare_labels_save_on_the_grid_of_the_scan_of_their_shape(
    viewer_with_ct, phantom_pair, tmp_path, notes
):
    ct = viewer_with_ct.layers[0]
    drawn = viewer_with_ct.add_labels(np.zeros(ct.data.shape, np.uint8), name="painted")
    drawn.data[5:8, 10:20, 10:20] = 2
    out = tmp_path / "painted.nii.gz"

    drawn.save(str(out), plugin="napari-medai")

    saved, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(phantom_pair[0]))
    np.testing.assert_allclose(saved.GetOrigin(), source.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(saved.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(saved.GetDirection(), source.GetDirection(), atol=1e-6)
    assert notes == ["Saved \"painted\" on the grid of 'phantom_ct' (same shape)."]
    sidecar = json.loads((tmp_path / "painted.json").read_text())
    assert sidecar["volumes_ml"] == {"2": pytest.approx(3 * 10 * 10 * 6 * 5 * 5 / 1000, abs=1e-3)}
    assert sidecar["input"] == "phantom_ct.nii.gz"
    assert sidecar["provenance"]["grid_from"] == "phantom_ct"


def test_bare_labels_without_a_matching_scan_are_refused(viewer_with_ct, tmp_path, notes):
    drawn = viewer_with_ct.add_labels(np.ones((5, 6, 7), np.uint8), name="odd")
    with pytest.raises(GeometryError, match=r"no open scan is 5 x 6 x 7 voxels"):
        drawn.save(str(tmp_path / "odd.nii.gz"), plugin="napari-medai")
    assert list(tmp_path.glob("odd*")) == []


def test_bare_labels_matching_two_grids_name_both(viewer_with_ct, phantom, tmp_path, notes):
    moved = Image(phantom[0].array, name="other", metadata=viewer_with_ct.layers[0].metadata)
    moved.metadata = {
        "napari_medai": {
            **moved.metadata["napari_medai"],
            "geometry": Geometry(spacing=(2, 2, 2)).to_dict(),
        }
    }
    moved.affine = Geometry(spacing=(2, 2, 2)).affine()
    viewer_with_ct.add_layer(moved)
    drawn = viewer_with_ct.add_labels(np.ones(phantom[0].array.shape, np.uint8), name="which")
    with pytest.raises(GeometryError, match=r"'phantom_ct', 'other'"):
        drawn.save(str(tmp_path / "which.nii.gz"), plugin="napari-medai")


@pytest.mark.parametrize("shape", [(64, 64), (2, 24, 64, 64)])
def test_2d_and_4d_labels_get_a_specific_message(viewer_with_ct, tmp_path, shape):
    drawn = viewer_with_ct.add_labels(np.ones(shape, np.uint8), name="flat")
    with pytest.raises(GeometryError, match=rf"it is {len(shape)}D .*3D label maps"):
        drawn.save(str(tmp_path / "flat.nii.gz"), plugin="napari-medai")


def test_labels_outside_the_scan_are_counted_in_a_warning(viewer_with_ct, tmp_path, notes):
    ct = viewer_with_ct.layers[0]
    extent = viewer_with_ct.add_labels(
        np.zeros((30, 64, 64), np.uint8), affine=ct.affine.affine_matrix, name="extent"
    )
    extent.translate = (-2.0, 0.0, 0.0)  # starts two slices before the scan (voxel units)
    extent.data[0, 1:4, 1:4] = 1  # 9 voxels outside
    extent.data[10, 1:3, 1:3] = 1  # 4 inside
    out = tmp_path / "extent.nii.gz"
    extent.save(str(out), plugin="napari-medai")
    assert any(note.startswith("9 labelled voxel(s)") for note in notes), notes
    assert int(np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))) == 4


def test_saving_onto_a_folder_says_so(viewer_with_ct, tmp_path):
    ct = viewer_with_ct.layers[0]
    drawn = viewer_with_ct.add_labels(np.ones(ct.data.shape, np.uint8), name="mask")
    folder = tmp_path / "mask.nii.gz"
    folder.mkdir()
    with pytest.raises(MedaiError, match="a folder has that name"):
        drawn.save(str(folder), plugin="napari-medai")


def test_real_masks_open_as_labels_on_their_scan_grid(shared_data):
    viewer = ViewerModel()
    folder = shared_data / "totalsegmentator"
    [ct] = viewer.open(str(folder / "example_ct_sm.nii.gz"), plugin="napari-medai")
    [seg] = viewer.open(str(folder / "example_seg.nii.gz"), plugin="napari-medai")
    assert isinstance(ct, Image) and isinstance(seg, Labels)
    assert seg.data.shape == ct.data.shape
    corner = np.array(ct.data.shape) - 1
    for index in ((0, 0, 0), corner, corner // 2):
        np.testing.assert_allclose(seg.data_to_world(index), ct.data_to_world(index), atol=1e-4)
    assert 5 in np.unique(seg.data)  # liver

    radiomics = shared_data / "pyradiomics"
    for name in ("brain2_label.nrrd", "prostate_phantom_subvolume-label.nrrd"):
        [layer] = viewer.open(str(radiomics / name), plugin="napari-medai")
        assert isinstance(layer, Labels), name
    [image] = viewer.open(str(radiomics / "brain2_image.nrrd"), plugin="napari-medai")
    assert isinstance(image, Image)

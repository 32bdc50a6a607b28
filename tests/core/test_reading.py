"""core.io.reading on synthetic files written by SimpleITK (truth: SimpleITK's own geometry)."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.errors import SeriesSelectionError, UnreadableFileError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.reading import can_read, read_label_map, read_volume, read_volume_job
from napari_medai.core.jobs import Progress
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import Volume, volume_to_sitk

HAVE_DICOM = importlib.util.find_spec("napari_medai.core.io.dicom") is not None
SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]


def rotation_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    """A rotation (degrees about x, y, z) with x flipped: oblique and a reflection."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag([-1.0, 1.0, 1.0])


def synthetic_image(array: np.ndarray) -> sitk.Image:
    """``array`` (z, y, x) on an oblique, anisotropic grid with an offset origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8125, 1.25, 3.5))
    image.SetOrigin((-120.5, 87.25, -301.75))
    image.SetDirection(rotation_xyz(12.0, -20.0, 33.0).ravel().tolist())
    return image


def world_points_agree(volume: Volume, image: sitk.Image, rng: np.random.Generator, tol: float):
    """200 random voxels: Geometry.index_to_world vs TransformIndexToPhysicalPoint."""
    shape = volume.spatial_shape
    index = np.stack([rng.integers(0, n, 200) for n in shape], axis=1)
    ours = volume.geometry.index_to_world(index)
    truth = np.array(
        [image.TransformIndexToPhysicalPoint([int(i) for i in row[::-1]])[::-1] for row in index]
    )
    np.testing.assert_allclose(ours, truth, atol=tol, rtol=0)


def gzip_in_place(path: Path) -> None:
    """Replace ``path`` by ``path.gz``."""
    with path.open("rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


@pytest.fixture
def ct_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 1500, size=(9, 14, 11)).astype(np.int16)
    array[0, 0, 0] = -1000
    return array


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_geometry_and_voxels_match_simpleitk(tmp_path, ct_array, suffix):
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(synthetic_image(ct_array), str(path))
    truth = sitk.ReadImage(str(path))

    volume = read_volume(path)

    world_points_agree(volume, truth, np.random.default_rng(1), 1e-6)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(truth))
    assert volume.array.dtype == np.int16
    assert volume.metadata["name"] == "scan"
    assert volume.metadata["source"] == path.name
    assert volume.metadata["warnings"] == []


def test_nifti_sform_float32_rounding_is_not_a_new_grid(tmp_path):
    """The phantom's oblique grid, stored by SimpleITK: read exactly where SimpleITK reads it.

    NIfTI rounds each sform entry to float32; taken as is, the grid moves 9e-6 mm across
    this volume. The stored voxel sizes and the nearest rotation restore it to 1e-6 mm.
    """
    volume, _ = make_phantom()
    path = tmp_path / "phantom.nii"
    sitk.WriteImage(volume_to_sitk(volume), str(path))
    world_points_agree(read_volume(path), sitk.ReadImage(str(path)), np.random.default_rng(5), 1e-6)


def test_nrrd_geometry_is_exact_in_double_precision(tmp_path, ct_array):
    image = synthetic_image(ct_array)
    image.SetOrigin((-120.123456789, 87.987654321, -301.000000123))
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))

    geometry = read_volume(path).geometry

    np.testing.assert_allclose(geometry.origin[::-1], image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(
        geometry.direction, np.reshape(image.GetDirection(), (3, 3))[::-1, ::-1], atol=1e-9
    )


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32])
def test_dtype_is_kept(tmp_path, ct_array, dtype):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(synthetic_image(np.abs(ct_array).astype(dtype)), str(path))
    assert read_volume(path).array.dtype == dtype


def test_modality_from_intensities(tmp_path, ct_array):
    sitk.WriteImage(synthetic_image(ct_array), str(tmp_path / "ct.nii.gz"))
    mr = (ct_array - ct_array.min()).astype(np.int16)
    sitk.WriteImage(synthetic_image(mr), str(tmp_path / "mr.nii.gz"))
    assert read_volume(tmp_path / "ct.nii.gz").modality == "CT"
    assert read_volume(tmp_path / "mr.nii.gz").modality == ""


def test_modality_stated_by_the_header_wins(tmp_path, ct_array):
    image = synthetic_image(ct_array)
    image.SetMetaData("DICOM_0008_0060_Modality", "MR")
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))

    mha = tmp_path / "scan.mha"
    sitk.WriteImage(synthetic_image(ct_array), str(mha), useCompression=False)
    raw = mha.read_bytes()
    mha.write_bytes(raw.replace(b"ElementDataFile", b"Modality = MET_MOD_MR\nElementDataFile", 1))

    assert read_volume(tmp_path / "scan.nrrd").modality == "MR"
    assert read_volume(mha).modality == "MR"


def test_metaimage_with_a_field_name_that_is_not_text_opens(tmp_path, ct_array):
    """A bit flip in a header field's name: SimpleITK cannot hand that field back (TypeError)."""
    path = tmp_path / "flipped.mha"
    sitk.WriteImage(synthetic_image(ct_array), str(path), useCompression=False)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"ElementDataFile", b"Bad\xffKey = 1\nElementDataFile", 1))
    np.testing.assert_array_equal(read_volume(path).array, ct_array)


def test_nifti_without_transform_opens_with_a_warning(tmp_path):
    path = tmp_path / "notransform.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.uint8).reshape(5, 4, 3), None), path)
    assert nib.load(path).header["qform_code"] == 0 and nib.load(path).header["sform_code"] == 0

    volume = read_volume(path)

    assert volume.spatial_shape == (3, 4, 5)
    assert len(volume.metadata["warnings"]) == 1
    assert "no orientation" in volume.metadata["warnings"][0]
    assert path.name in volume.metadata["warnings"][0]


def test_gzipped_nifti_pair_opens(tmp_path, ct_array):
    sitk.WriteImage(synthetic_image(ct_array), str(tmp_path / "pair.hdr"))
    gzip_in_place(tmp_path / "pair.hdr")
    gzip_in_place(tmp_path / "pair.img")

    volume = read_volume(tmp_path / "pair.hdr.gz")

    np.testing.assert_array_equal(volume.array, ct_array)
    assert volume.metadata["name"] == "pair"


def test_multi_member_gzip_nifti_is_not_mistaken_for_truncated(tmp_path, ct_array):
    # Tools such as pigz/bgzip write several gzip members; the trailer then holds
    # only the last member's size, so the reader must count the whole stream.
    sitk.WriteImage(synthetic_image(ct_array), str(tmp_path / "scan.nii"))
    raw = (tmp_path / "scan.nii").read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))

    np.testing.assert_array_equal(read_volume(path).array, ct_array)


def test_four_d_opens_as_time_axis(tmp_path, ct_array):
    frames = [synthetic_image((ct_array + 10 * t).astype(np.int16)) for t in range(3)]
    series = sitk.JoinSeries(frames)
    direction = np.eye(4)
    direction[:3, :3] = np.reshape(frames[0].GetDirection(), (3, 3))
    series.SetDirection(direction.ravel().tolist())
    series.SetOrigin([*frames[0].GetOrigin(), 0.0])
    series.SetSpacing([*frames[0].GetSpacing(), 2.0])
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(series, str(path))

    volume = read_volume(path)

    assert volume.array.shape == (3, *ct_array.shape)
    assert volume.metadata["channel_axis_name"] == "time"
    for t in range(3):
        np.testing.assert_array_equal(volume.array[t], ct_array + 10 * t)
    world_points_agree(
        volume, sitk.ReadImage(str(path))[:, :, :, 0], np.random.default_rng(2), 1e-6
    )


def test_vector_pixels_open_as_channel_axis(tmp_path, ct_array):
    channels = [synthetic_image((ct_array * (c + 1)).astype(np.int16)) for c in range(2)]
    path = tmp_path / "multi.mha"
    sitk.WriteImage(sitk.Compose(channels), str(path))

    volume = read_volume(path)

    assert volume.array.shape == (2, *ct_array.shape)
    assert volume.metadata["channel_axis_name"] == "channel"
    np.testing.assert_array_equal(volume.array[1], ct_array * 2)
    world_points_agree(volume, channels[0], np.random.default_rng(3), 1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_two_d_opens_as_one_slice(tmp_path, suffix):
    plane = np.arange(35, dtype=np.int16).reshape(5, 7)
    image = sitk.GetImageFromArray(plane)
    image.SetSpacing((0.5, 0.75))
    image.SetOrigin((10.0, -20.0))
    image.SetDirection((0.0, -1.0, 1.0, 0.0))
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(image, str(path))
    truth = sitk.ReadImage(str(path))
    assert truth.GetDimension() == 2

    volume = read_volume(path)

    assert volume.array.shape == (1, 5, 7)
    np.testing.assert_array_equal(volume.array[0], plane)
    assert volume.geometry.spacing[0] == 1.0
    np.testing.assert_allclose(volume.geometry.direction[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(volume.geometry.direction[:, 0], [1.0, 0.0, 0.0])
    rng = np.random.default_rng(4)
    for y, x in zip(rng.integers(0, 5, 20), rng.integers(0, 7, 20)):
        point = truth.TransformIndexToPhysicalPoint([int(x), int(y)])
        ours = volume.geometry.index_to_world([0, y, x])[0]
        np.testing.assert_allclose(ours, [0.0, point[1], point[0]], atol=1e-6)


def _truncate(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _bad_inputs(tmp_path: Path, ct_array: np.ndarray) -> dict[str, Path]:
    good_gz = tmp_path / "good.nii.gz"
    sitk.WriteImage(synthetic_image(ct_array), str(good_gz))
    good_nii = tmp_path / "good.nii"
    sitk.WriteImage(synthetic_image(ct_array), str(good_nii))
    pair = tmp_path / "pair.hdr"
    sitk.WriteImage(synthetic_image(ct_array), str(pair))
    gzip_in_place(tmp_path / "pair.img")
    _truncate(tmp_path / "pair.img.gz", tmp_path / "pair.img.gz", 0.6)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "noise.nrrd").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.txt").write_text("not an image")
    return {
        "empty": tmp_path / "empty.nii.gz",
        "truncated .nii.gz": _truncate(good_gz, tmp_path / "cut.nii.gz", 0.5),
        "truncated .nii": _truncate(good_nii, tmp_path / "cut.nii", 0.7),
        "header only .nii.gz": _truncate(good_gz, tmp_path / "stub.nii.gz", 0.02),
        "truncated pair": pair,
        "random bytes .nrrd": tmp_path / "noise.nrrd",
        "unsupported suffix": tmp_path / "notes.txt",
        "missing": tmp_path / "nowhere.nii.gz",
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "truncated .nii.gz",
        "truncated .nii",
        "header only .nii.gz",
        "truncated pair",
        "random bytes .nrrd",
        "missing",
        pytest.param(
            "unsupported suffix",
            marks=pytest.mark.skipif(not HAVE_DICOM, reason="core/dicom.py not written yet"),
        ),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, ct_array, case):
    path = _bad_inputs(tmp_path, ct_array)[case]
    start = time.perf_counter()
    with pytest.raises(UnreadableFileError) as raised:
        read_volume(path)
    assert time.perf_counter() - start < 5.0
    assert path.name in str(raised.value)


@pytest.mark.skipif(not HAVE_DICOM, reason="core/dicom.py not written yet")
def test_folder_without_images_gives_a_clear_error(tmp_path):
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images")
    with pytest.raises(UnreadableFileError, match="nothing_here"):
        read_volume(folder)
    assert can_read(folder)  # claimed, so napari shows this error rather than a generic one


def test_series_uid_is_refused_for_a_single_file(tmp_path, ct_array):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(synthetic_image(ct_array), str(path))
    with pytest.raises(SeriesSelectionError, match="scan.nii.gz"):
        read_volume(path, series_uid="1.2.3")


def test_job_reports_progress_up_to_one(tmp_path, ct_array):
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(synthetic_image(ct_array), str(path))
    job = read_volume_job(path)
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            volume = stop.value
            break
    assert all(isinstance(event, Progress) for event in events)
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert isinstance(volume, Volume)


def test_can_read_never_raises(tmp_path, ct_array):
    path = tmp_path / "scan.mha"
    sitk.WriteImage(synthetic_image(ct_array), str(path))
    assert can_read(path)
    assert can_read(str(tmp_path / "x.nii.gz"))
    assert can_read(tmp_path / "brain.mgz")
    assert can_read(tmp_path / "missing_no_suffix")  # claimed: the reader says "no such file"
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert not can_read(tmp_path / "photo.png")  # left to napari's own readers
    assert not can_read("\0bad")


# --- label maps --------------------------------------------------------------


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:6, 3:9, 2:8] = 3
    labels[1:3, 8:12, 5:10] = 7
    return labels


def test_label_map_on_the_same_grid_is_untouched(tmp_path, ct_array):
    labels = _labels(ct_array.shape)
    path = tmp_path / "seg.nrrd"
    sitk.WriteImage(synthetic_image(labels), str(path))
    sitk.WriteImage(synthetic_image(ct_array), str(tmp_path / "ct.nrrd"))
    reference = read_volume(tmp_path / "ct.nrrd")

    label_map = read_label_map(path, reference)

    np.testing.assert_array_equal(label_map.array, labels)
    assert label_map.geometry == reference.geometry
    assert label_map.metadata["warnings"] == []


def test_label_map_is_resampled_onto_the_reference_grid(tmp_path):
    # The labels live on a finer, larger, differently rotated grid around the reference.
    reference = Volume(
        np.zeros((8, 12, 10), np.int16),
        Geometry(
            spacing=(3.0, 1.5, 1.25),
            origin=(-5.3, 4.1, -7.7),
            direction=rotation_xyz(5.0, 0.0, 10.0)[::-1, ::-1],
        ),
    )
    centre = reference.geometry.index_to_world((np.array(reference.spatial_shape) - 1) / 2)[0]
    source = sitk.Image([40, 44, 50], sitk.sitkUInt8)
    source.SetSpacing((0.7, 0.9, 1.1))
    source.SetDirection(rotation_xyz(0.0, 8.0, -4.0).ravel().tolist())
    half_extent = np.reshape(source.GetDirection(), (3, 3)) @ (
        np.multiply(source.GetSpacing(), np.subtract(source.GetSize(), 1)) / 2
    )
    source.SetOrigin((centre[::-1] - half_extent).tolist())
    values = np.zeros((50, 44, 40), np.uint8)
    x, y, z = source.TransformPhysicalPointToIndex(centre[::-1].tolist())
    values[z - 8 : z + 8, y - 14 : y + 2, x - 10 : x + 12] = 4
    values[z - 4 : z + 4, y - 4 : y + 4, x - 4 : x + 4] = 9
    values[0:3, 0:3, 0:3] = 6  # far corner: outside the reference grid
    labelled = sitk.GetImageFromArray(values)
    labelled.CopyInformation(source)
    path = tmp_path / "big_seg.nii.gz"
    sitk.WriteImage(labelled, str(path))
    on_disk = sitk.ReadImage(str(path))

    label_map = read_label_map(path, reference)

    assert label_map.spatial_shape == reference.spatial_shape
    assert label_map.geometry == reference.geometry
    assert set(np.unique(label_map.array)) == {0, 4, 9}
    # Every reference voxel takes the label of the source voxel nearest its centre.
    index = np.argwhere(np.ones(reference.spatial_shape, bool))
    world = reference.geometry.index_to_world(index)
    disk_values = sitk.GetArrayViewFromImage(on_disk)
    for (z, y, x), point in zip(index, world):
        source_index = on_disk.TransformPhysicalPointToIndex(point[::-1].tolist())
        inside = all(0 <= i < n for i, n in zip(source_index, on_disk.GetSize()))
        expected = disk_values[source_index[::-1]] if inside else 0
        assert label_map.array[z, y, x] == expected
    assert any("resampled" in warning for warning in label_map.metadata["warnings"])
    assert any("[6]" in warning for warning in label_map.metadata["warnings"])


def test_integral_float_labels_are_converted(tmp_path, ct_array):
    labels = _labels(ct_array.shape)
    path = tmp_path / "float_seg.nii.gz"
    sitk.WriteImage(synthetic_image(labels.astype(np.float32)), str(path))

    label_map = read_label_map(path)

    assert label_map.array.dtype == np.uint8
    np.testing.assert_array_equal(label_map.array, labels)


def test_fractional_labels_are_refused(tmp_path, ct_array):
    path = tmp_path / "probabilities.nii.gz"
    sitk.WriteImage(synthetic_image(_labels(ct_array.shape) / 7.0), str(path))
    with pytest.raises(UnreadableFileError, match="probabilities.nii.gz.*fractional"):
        read_label_map(path)


def test_four_d_label_map_is_refused(tmp_path, ct_array):
    labels = _labels(ct_array.shape)
    path = tmp_path / "stack.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(labels)] * 2), str(path))
    with pytest.raises(UnreadableFileError, match="stack.nii.gz"):
        read_label_map(path)

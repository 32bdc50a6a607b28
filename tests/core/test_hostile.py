"""Issue 12 cases that need more than "opens or is refused": values, grids, jobs, clean-up.

The corpus in ``tests/fuzz`` runs every case through napari and the CLI in a
child process; these tests check what each repaired case opens as.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import time
import zipfile

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_enhanced, write_series

from napari_medai.cli import main
from napari_medai.core.errors import MedaiError, UnreadableFileError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom import remove_stale_folders
from napari_medai.core.io.reading import distinct_sources, read_volume
from napari_medai.core.io.validate import check_image_header
from napari_medai.core.volume import LabelMap, Volume

PIXELS = np.random.default_rng(3).integers(0, 1000, (4, 16, 16)).astype(np.int16)


def _nifti(path, patch=None, data=None, affine=None):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) if data is None else data
    image = nibabel.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]) if affine is None else affine)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    nibabel.save(image, path)
    if patch is not None:
        raw = bytearray(path.read_bytes())
        patch(raw)
        path.write_bytes(bytes(raw))
    return path


def _nibabel_world(path, index_zyx):
    """World LPS (z, y, x) of a voxel (z, y, x) from nibabel's affine."""
    affine = nibabel.load(path).affine
    ras = affine @ np.array([*index_zyx[::-1], 1.0])
    return np.array([ras[2], -ras[1], -ras[0]])


# --- case 10, 11, 13, 14: DICOM series sanity ----------------------------------------------


def test_rounding_in_slice_positions_adds_no_column(tmp_path):
    """Case 10: 8.8e-7 mm of DS rounding in-plane must not grow the resampled grid."""
    pixels = np.zeros((10, 32, 48), np.int16)
    depths = np.array([0, 2, 4, 6, 8, 10, 12, 15, 18, 21], dtype=float)
    positions = np.column_stack([np.full(10, -20.0), np.full(10, -30.0), depths])
    positions[3, 0] += 8.8e-7
    write_series(tmp_path / "s", pixels, positions=positions)
    volume = read_volume(tmp_path / "s")
    assert volume.array.shape[1:] == (32, 48)
    assert "unevenly spaced" in " ".join(volume.metadata["warnings"])


def test_time_series_at_one_position_opens_with_a_warning(tmp_path):
    """Case 11: distinct temporal positions at one place are a time series, said so."""
    for k in range(3):
        write_series(
            tmp_path / "t",
            PIXELS[k : k + 1],
            names=[f"t{k}.dcm"],
            temporal=k + 1,
            series_uid="1.2.3.4",
            instances=[k + 1],
        )
    volume = read_volume(tmp_path / "t")
    assert volume.array.shape == (3, 1, 16, 16)
    assert "time series of one slice" in " ".join(volume.metadata["warnings"])


def test_far_outlier_slice_is_split_off(tmp_path):
    """Case 13: three close slices keep their own grid; the far one is left out, said so."""
    positions = np.array([[0, 0, 0], [0, 0, 2.5], [0, 0, 5.0], [0, 0, 205.0]])
    write_series(tmp_path / "o", PIXELS, positions=positions)
    volume = read_volume(tmp_path / "o")
    assert volume.array.shape == (3, 16, 16)
    assert volume.geometry.spacing[0] == pytest.approx(2.5)
    assert "1 image(s) lie far from the other 3" in " ".join(volume.metadata["warnings"])


def test_one_slice_without_position_leaves_the_others_placed(tmp_path):
    """Case 14: one unplaced slice is left out instead of dropping every position."""
    paths = write_series(tmp_path / "p", PIXELS, origin=(-20.0, -30.0, 40.0), step=2.5)
    ds = pydicom.dcmread(paths[2])
    del ds.ImagePositionPatient
    ds.save_as(paths[2])
    volume = read_volume(tmp_path / "p")
    assert volume.geometry.origin[0] == pytest.approx(40.0)
    assert "1 image(s) of this series carry no usable position" in volume.metadata["warnings"][0]


def test_invalid_orientation_is_named(tmp_path):
    """Case 7: an all-zero ImageOrientationPatient is named instead of a NaN traceback."""
    paths = write_series(tmp_path / "z", PIXELS)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
        ds.save_as(path)
    volume = read_volume(tmp_path / "z")
    assert volume.array.shape == (4, 16, 16)
    assert "not two perpendicular unit vectors" in " ".join(volume.metadata["warnings"])


def test_huge_rescale_slope_is_refused(tmp_path):
    """Case 7: RescaleSlope 1e30 in an enhanced file is refused, not an OverflowError."""
    path = write_enhanced(
        tmp_path / "e.dcm", PIXELS, np.array([[0, 0, 2.0 * k] for k in range(4)]), slopes=[1e30] * 4
    )
    with pytest.raises(UnreadableFileError, match="implausible rescale"):
        read_volume(path)


def test_short_pixel_data_is_refused(tmp_path):
    """Case 2: pixel bytes shorter than Rows x Columns x bits never open as random memory."""
    paths = write_series(tmp_path / "h", PIXELS)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:100]
        ds.save_as(path)
    with pytest.raises(UnreadableFileError, match="100 bytes of pixel data"):
        read_volume(tmp_path / "h")


def test_deflated_dicom_opens_with_the_right_values(tmp_path):
    """Case 14: a Deflated Explicit VR file is an image, not "no pixel data"."""
    source = write_series(tmp_path / "src", PIXELS[:1])[0]
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    target = tmp_path / "deflated.dcm"
    ds.save_as(target, enforce_file_format=True)
    volume = read_volume(target)
    np.testing.assert_array_equal(volume.array.reshape(16, 16), PIXELS[0])


def test_selecting_every_file_of_a_series_opens_it_once(tmp_path):
    """Case 6: N files of one series selected together are one source."""
    paths = write_series(tmp_path / "n", PIXELS)
    other = write_series(tmp_path / "n", PIXELS[:2], names=["x0.dcm", "x1.dcm"])
    assert distinct_sources([*paths, *other]) == [paths[0], other[0]]


# --- case 12, 14: NIfTI -------------------------------------------------------------------


def test_disagreeing_sform_is_used_like_nibabel(tmp_path):
    """Case 12: when qform and sform disagree the sform wins, with a warning."""
    path = _nifti(
        tmp_path / "d.nii", lambda raw: raw.__setitem__(slice(292, 296), struct.pack("<f", 50.0))
    )
    volume = read_volume(path)
    np.testing.assert_allclose(volume.geometry.origin, _nibabel_world(path, (0, 0, 0)), atol=1e-4)
    corner = volume.geometry.index_to_world(np.array([5, 4, 3]))[0]
    np.testing.assert_allclose(corner, _nibabel_world(path, (5, 4, 3)), atol=1e-4)
    assert "sform is used" in " ".join(volume.metadata["warnings"])


def test_sheared_sform_is_shown_exactly(tmp_path):
    """Case 12: a sheared sform keeps its shear (napari shows it exactly), with a warning."""
    shear = np.array([[2.0, 0.8, 0, 5], [0, 3, 0, 6], [0, 0, 4, 7], [0, 0, 0, 1]])
    path = _nifti(tmp_path / "s.nii", affine=shear)
    volume = read_volume(path)
    assert not volume.geometry.is_orthonormal
    for index in ((0, 0, 0), (5, 4, 3), (2, 1, 0)):
        world = volume.geometry.index_to_world(np.array(index))[0]
        np.testing.assert_allclose(world, _nibabel_world(path, index), atol=1e-4)
    assert "sheared" in " ".join(volume.metadata["warnings"])


@pytest.mark.parametrize("slope", [0.0, float("nan")])
def test_zero_or_nan_slope_means_no_scaling(tmp_path, slope):
    """Case 14: scl_slope 0 or NaN ignores scl_inter (NIfTI), as nibabel does."""
    path = _nifti(
        tmp_path / "z.nii",
        lambda raw: raw.__setitem__(slice(112, 120), struct.pack("<2f", slope, 100.0)),
    )
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, np.arange(120).reshape(4, 5, 6).T)
    assert "scl_inter 100 ignored" in " ".join(volume.metadata["warnings"])


def test_nifti2_opens_like_nibabel(tmp_path):
    """Case 15: a valid NIfTI-2 opens (SimpleITK cannot read it; nibabel does)."""
    data = np.arange(120, dtype=np.int16).reshape(4, 5, 6)
    path = tmp_path / "n2.nii"
    nibabel.save(nibabel.Nifti2Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, data.T)
    np.testing.assert_allclose(volume.geometry.spacing, [4.0, 3.0, 2.0])


def test_metaimage_with_99_dimensions_is_refused_in_python(tmp_path):
    """Case 5: the header that aborts ITK never reaches it."""
    path = tmp_path / "n.mha"
    path.write_bytes(
        b"ObjectType = Image\nNDims = 99\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        b"ElementDataFile = LOCAL\n" + bytes(8)
    )
    with pytest.raises(UnreadableFileError, match="declares 99 dimensions"):
        check_image_header(path)


# --- case 4: bounded work and clean temp folders ------------------------------------------


def test_zip_of_filler_is_refused_quickly_without_unpacking(tmp_path, monkeypatch):
    """Case 4: a zip bomb of non-DICOM filler is never written to disk."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for k in range(4):
            archive.writestr(f"f{k}.bin", bytes(16 << 20))
    started = time.perf_counter()
    with pytest.raises(UnreadableFileError, match="holds no DICOM"):
        read_volume(bomb)
    assert time.perf_counter() - started < 5
    assert list((tmp_path / "tmp").iterdir()) == []


def test_folders_of_killed_runs_are_removed(tmp_path):
    """Case 4: a killed run's unzip folder is deleted by the next run; a live one is kept."""
    dead = tmp_path / "napari-medai-dicom-999999999-abc"
    live = tmp_path / f"napari-medai-dicom-{os.getpid()}-abc"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "IM0001.dcm").write_bytes(b"x")
    remove_stale_folders(tmp_path)
    assert not dead.exists()
    assert live.exists()


def test_nii_gz_with_far_more_data_than_promised_is_refused_fast(tmp_path, monkeypatch):
    """Case 4: inflation stops a bounded way past the promised size (48 MB are never inflated).

    The data of a NIfTI is checked as it is read (one inflation), so the reader refuses it.
    """
    from napari_medai.core.io import validate

    monkeypatch.setattr(validate, "MAX_TRAILING_BYTES", 1 << 20)
    header = nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)).header
    path = tmp_path / "long.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(header.binaryblock + b"\0" * 4 + bytes(240) + bytes(48 << 20))
    started = time.perf_counter()
    with pytest.raises(UnreadableFileError, match="runs on more than 1.0 MB past the image"):
        read_volume(path)
    # Inflating 1 MB takes milliseconds; all 48 MB would take about ten times as long.
    assert time.perf_counter() - started < 0.5


# --- case 8, 9: jobs validate their inputs ------------------------------------------------


def _tiny_segmenter():
    from test_inference import loaded, make_card

    from napari_medai.core.models.networks import build_network

    card = make_card()
    return loaded(card, build_network(card))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 32, 32), np.int16), "needs a volume"),
        (np.ones((4, 8, 8), np.complex64), "complex values"),
        (np.full((4, 8, 8), np.nan, np.float32), "not numbers"),
    ],
)
def test_segment_refuses_bad_input_up_front(array, message):
    from napari_medai.core.segmentation.inference import SegmentConfig, segment_job

    volume = Volume(array, Geometry(), {"modality": "CT"})
    with pytest.raises(MedaiError, match=message):
        segment_job(volume, _tiny_segmenter(), SegmentConfig(device="cpu"))


@pytest.mark.parametrize(
    ("image", "labels", "message"),
    [
        (np.zeros((4, 8, 8), np.int16), np.full((4, 8, 8), -3, np.int16), "negative values"),
        (np.ones((4, 8, 8), np.complex64), np.ones((4, 8, 8), np.uint8), "complex values"),
        (np.full((4, 8, 8), np.nan, np.float32), np.ones((4, 8, 8), np.uint8), "not numbers"),
    ],
)
def test_train_refuses_bad_input_up_front(tmp_path, image, labels, message):
    from napari_medai.core.training.trainer import TrainConfig, train_job

    pair = (Volume(image, Geometry(), {"name": "scan"}), LabelMap(labels, Geometry(), {}, {}))
    with pytest.raises(MedaiError, match=message):
        train_job([pair], TrainConfig(out_dir=tmp_path / "m", device="cpu"))


def test_complex_nifti_is_refused_by_the_reader(tmp_path):
    """Case 8: the reader, the CLI and segment all refuse complex data in the same words."""
    path = tmp_path / "c.nii"
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), path)
    with pytest.raises(UnreadableFileError, match="complex"):
        read_volume(path)
    assert sitk.ReadImage(str(path)).GetPixelIDTypeAsString().startswith("complex")


def test_permission_denied_is_named(tmp_path, monkeypatch):
    """Case 15: an unreadable file says "permission denied", not "damaged" or "not DICOM"."""
    path = _nifti(tmp_path / "p.nii")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode)
    )
    with pytest.raises(UnreadableFileError, match="permission denied"):
        read_volume(path)


# --- issue 17: image files ------------------------------------------------------------------


def _rot(path, at=0.8, count=16):
    """Flip ``count`` bytes at ``at`` of the file: bit rot inside a compressed stream."""
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * at)
    raw[start : start + count] = bytes(b ^ 0xFF for b in raw[start : start + count])
    path.write_bytes(bytes(raw))
    return path


def _noise_image():
    rng = np.random.default_rng(17)
    return sitk.GetImageFromArray(rng.integers(-1000, 1000, (12, 40, 40)).astype(np.int16))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_bit_rot_inside_compressed_data_is_refused_as_damaged(tmp_path, suffix):
    """Bit rot at 80% of a gzip/zlib stream (trailer intact) fails its checksum: refused.

    Before, the check inflated only as far as the header promised, never reaching the
    checksum, and the file opened with garbage voxels.
    """
    path = tmp_path / f"rot{suffix}"
    sitk.WriteImage(_noise_image(), str(path), useCompression=True)
    _rot(path)
    with pytest.raises(UnreadableFileError, match=f'"rot{suffix}".*the file is damaged'):
        read_volume(path)


@pytest.mark.real
def test_bit_rot_in_a_real_nii_gz_is_refused(tmp_path, shared_data):
    """The issue's case: a real CT .nii.gz with 16 bytes flipped at 80% of its stream."""
    path = tmp_path / "ct.nii.gz"
    path.write_bytes((shared_data / "totalsegmentator" / "example_ct_sm.nii.gz").read_bytes())
    _rot(path)
    with pytest.raises(UnreadableFileError, match='"ct.nii.gz".*the file is damaged'):
        read_volume(path)


def _save_nifti(path, image_type, data, patch=None):
    nibabel.save(image_type(data, np.diag([2.0, 3.0, 4.0, 1.0])), path)
    if patch is not None:
        raw = bytearray(path.read_bytes())
        patch(raw)
        path.write_bytes(bytes(raw))
    return path


def _no_scaling_but_an_intercept(raw):
    """NIfTI-1 scl_slope 0 (no scaling) with scl_inter 5 (ignored)."""
    raw[112:120] = struct.pack("<2f", 0.0, 5.0)


@pytest.mark.parametrize("image_type", [nibabel.Nifti1Image, nibabel.Nifti2Image])
@pytest.mark.parametrize("extra", [(1, 1), (2, 1)])
def test_five_d_nifti_with_unit_extra_dims_opens(tmp_path, image_type, extra):
    """A 4x5x6x1x1 (or x2x1) NIfTI opens as 3D (or 4D) with nibabel's values."""
    data = np.arange(120 * extra[0], dtype=np.int16).reshape(4, 5, 6, *extra)
    patch = _no_scaling_but_an_intercept if image_type is nibabel.Nifti1Image else None
    path = _save_nifti(tmp_path / "five.nii", image_type, data, patch=patch)
    volume = read_volume(path)
    expected = data[..., 0].T if extra[0] > 1 else data[..., 0, 0].T
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.geometry.spacing, [4.0, 3.0, 2.0])
    assert main(["info", str(path)]) == 0


@pytest.mark.parametrize("image_type", [nibabel.Nifti1Image, nibabel.Nifti2Image])
def test_five_d_nifti_with_real_extra_dims_is_refused_naming_them(tmp_path, image_type, capsys):
    data = np.zeros((4, 5, 6, 2, 3), np.int16)
    path = _save_nifti(tmp_path / "five.nii", image_type, data)
    with pytest.raises(UnreadableFileError, match=r"5 dimensions \(4x5x6x2x3\)"):
        read_volume(path)
    assert main(["info", str(path)]) == 2
    assert "4x5x6x2x3" in capsys.readouterr().err


@pytest.mark.parametrize("intent", [1006, 1007])
def test_scaled_vector_nifti_opens_as_scaled_channels(tmp_path, intent):
    """ITK 5.4 corrupted its heap scaling a vector NIfTI, so it was refused; nibabel reads it.

    Three values per voxel become three channels, scaled as nibabel scales them, in float32
    (as ITK gives scaled NIfTI values; float64 would double the memory).
    """
    data = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 1, 3)
    image = nibabel.Nifti1Image(data, np.eye(4))
    image.header.set_intent(intent)
    image.header.set_slope_inter(2.0, -1.0)
    path = tmp_path / "vector.nii"
    nibabel.save(image, path)
    volume = read_volume(path)
    assert volume.array.dtype == np.float32
    assert volume.metadata["channel_axis_name"] == "channel"
    expected = np.asarray(nibabel.load(path).dataobj)[:, :, :, 0, :].T
    np.testing.assert_array_equal(volume.array, expected)


def _mgz(path, shape=(6, 7, 8)):
    data = np.random.default_rng(21).integers(-1000, 1000, shape).astype(np.int16)
    nibabel.save(nibabel.MGHImage(data, np.diag([-1.0, 1.5, 2.0, 1.0])), path)
    return path


def test_bit_rot_in_an_mgz_is_refused_as_damaged(tmp_path):
    """An .mgz is read and checked as a .nii.gz is: bit rot is "damaged", in the same words."""
    path = _rot(_mgz(tmp_path / "rot.mgz", (12, 40, 40)), at=0.8)
    with pytest.raises(UnreadableFileError, match='"rot.mgz".*the file is damaged'):
        read_volume(path)


def test_mgz_promising_more_than_memory_is_refused(tmp_path):
    """An MGH header's dimensions are checked against free memory before nibabel allocates."""
    path = _mgz(tmp_path / "big.mgz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[4:16] = struct.pack(">3i", 30000, 30000, 30000)  # MGH dims are big-endian int32
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(UnreadableFileError, match="more than this computer can hold"):
        read_volume(path)


def test_rgb_nifti_with_an_ignored_intercept_opens(tmp_path):
    """scl_slope 0 on RGB: the unscaled channels come back in ITK's layout (was a TypeError)."""
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = np.arange(120).reshape(4, 5, 6)
    path = _save_nifti(tmp_path / "rgb.nii", nibabel.Nifti1Image, rgb, _no_scaling_but_an_intercept)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array[1], rgb["G"].T)
    assert not volume.array[0].any() and not volume.array[2].any()


@pytest.mark.parametrize("image_type", [nibabel.Nifti1Image, nibabel.Nifti2Image])
def test_sheared_nifti_opens_the_same_in_both_versions(tmp_path, image_type):
    """One rule: a sheared sform (no qform) opens exactly, with a warning, NIfTI-1 or -2.

    ITK refused a sheared NIfTI-1 without a qform ("not a valid NIfTI file").
    """
    shear = np.array([[2.0, 0.8, 0, 5], [0, 3, 0, 6], [0, 0, 4, 7], [0, 0, 0, 1]])
    image = image_type(np.arange(120, dtype=np.int16).reshape(4, 5, 6), shear)
    image.set_qform(None, code=0)
    image.set_sform(shear, code=1)
    path = tmp_path / "sheared.nii"
    nibabel.save(image, path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, np.arange(120).reshape(4, 5, 6).T)
    for index in ((0, 0, 0), (5, 4, 3), (2, 1, 0)):
        world = volume.geometry.index_to_world(np.array(index))[0]
        np.testing.assert_allclose(world, _nibabel_world(path, index), atol=1e-4)
    assert "sheared" in " ".join(volume.metadata["warnings"])

"""What keeps the reader at bare SimpleITK's speed, with every check kept (issue 22).

Uncompressed DICOM files are read where the header scan found their values, with
no decoder; whatever that read cannot vouch for goes to a decoder. A .nii.gz that
barely compresses is inflated once, by Python, which checks its CRC-32 on the way.
Truth comes from pydicom (the factory's helpers), nibabel or SimpleITK on the same
files.
"""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import modality_values, write_series

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.io import dicom, reading, validate
from napari_medai.core.io.dicom import pixels, read_dicom_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job


def _no_decoder(monkeypatch) -> None:
    """Make any SimpleITK or pydicom pixel decoding in the DICOM reader fail the test."""

    class Refused:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a decoder was used")

    monkeypatch.setattr(pixels.sitk, "ImageSeriesReader", Refused)
    monkeypatch.setattr(pixels.sitk, "ImageFileReader", Refused)
    monkeypatch.setattr(pixels, "_with_pydicom", Refused)


def _ct_series(folder, slices=6, names=None):
    """Uncompressed CT files: uint16 stored values, intercept -1024 (HU -1024 to 975)."""
    stored = np.random.default_rng(2).integers(0, 2000, (slices, 12, 10)).astype(np.uint16)
    return write_series(folder, stored, intercept=-1024.0, names=names)


def test_uncompressed_series_is_read_without_a_decoder_in_the_narrowest_type(tmp_path, monkeypatch):
    """Stored values come straight from the files; HU that fit int16 are int16, as stored."""
    _no_decoder(monkeypatch)
    # Names in reverse of the slice order: the read follows the positions, not the names.
    paths = _ct_series(tmp_path, names=[f"IM{k:04d}.dcm" for k in range(6)][::-1])
    volume = run_job(read_dicom_job(tmp_path))
    truth = np.stack([modality_values(path) for path in paths])
    np.testing.assert_array_equal(volume.array, truth)
    assert volume.array.dtype == np.int16
    assert volume.array.flags.writeable


@pytest.mark.parametrize(
    ("stored_type", "slope", "intercept", "dtype"),
    [
        (np.uint16, 1.0, 0.0, np.uint16),
        (np.uint16, 100.0, -1024.0, np.int32),
        (np.uint16, -1.0, 0.0, np.int16),
        (np.int16, 2.0, -100.0, np.int16),
    ],
    ids=["as stored", "wider than stored", "negative slope", "signed stored"],
)
def test_direct_read_rescales_into_a_type_that_holds_every_value(
    tmp_path, monkeypatch, stored_type, slope, intercept, dtype
):
    """Values that outgrow the stored type get a wider one; none wraps around."""
    _no_decoder(monkeypatch)
    rng = np.random.default_rng(4)
    stored = rng.integers(-1000 if stored_type == np.int16 else 0, 2000, (3, 12, 10))
    stored[0, 0, 0] = 1999
    paths = write_series(tmp_path, stored.astype(stored_type), slope=slope, intercept=intercept)
    volume = run_job(read_dicom_job(tmp_path))
    np.testing.assert_array_equal(volume.array, np.stack([modality_values(p) for p in paths]))
    assert volume.array.dtype == dtype


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_direct_read_asks_for_every_file_s_pixels_before_copying_any(tmp_path, monkeypatch):
    """A cold series: the disk is asked for all the pixel ranges up front, not file by file."""
    _ct_series(tmp_path)
    events = []
    original_read = pixels._read_stored

    def advised(handle, offset, length, advice):
        events.append(("advise", offset, length, advice))

    def read(ref, target):
        events.append(("read", ref.stored.offset, len(target), None))
        original_read(ref, target)

    monkeypatch.setattr(pixels.os, "posix_fadvise", advised)
    monkeypatch.setattr(pixels, "_read_stored", read)
    run_job(read_dicom_job(tmp_path))
    kinds = [event[0] for event in events]
    assert kinds == ["advise"] * 6 + ["read"] * 6
    assert {event[1:3] for event in events[:6]} == {event[1:3] for event in events[6:]}
    assert {event[3] for event in events[:6]} == {os.POSIX_FADV_WILLNEED}


def test_big_endian_files_are_read_directly(tmp_path, monkeypatch):
    """Explicit VR big endian: the stored bytes are swapped, the values are pydicom's."""
    paths = _ct_series(tmp_path, slices=4)
    for path in paths:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
        ds.PixelData = values.astype(">u2").tobytes()
        pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    _no_decoder(monkeypatch)
    volume = run_job(read_dicom_job(tmp_path))
    expected = np.stack([pydicom.dcmread(p).pixel_array.astype(int) - 1024 for p in paths])
    np.testing.assert_array_equal(volume.array, expected)


def test_values_beyond_bits_stored_go_to_the_decoder(tmp_path, monkeypatch):
    """12 bits stored but higher bits set (overlay bits): GDCM decides, as a bare read does."""
    paths = _ct_series(tmp_path, slices=4)
    for path in paths:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array.copy()
        values[0, 0] = 0xF123  # bits above BitsStored
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = values.astype("<u2").tobytes()
        ds.save_as(path)
    direct = []
    original = pixels._direct_read_job

    def spy(slices):
        block = yield from original(slices)
        direct.append(block)
        return block

    monkeypatch.setattr(pixels, "_direct_read_job", spy)
    volume = run_job(read_dicom_job(tmp_path))
    assert direct == [None]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in paths])
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reader.Execute()))


def test_file_cut_short_after_the_header_scan_is_refused_by_name(tmp_path, monkeypatch):
    """The scan checked the length; a file truncated since then is refused, not zero-filled."""
    paths = _ct_series(tmp_path)
    original = dicom.build_stack

    def truncate_then_stack(slices, name):
        data = paths[3].read_bytes()
        paths[3].write_bytes(data[:-100])
        return original(slices, name)

    monkeypatch.setattr(dicom, "build_stack", truncate_then_stack)
    with pytest.raises(UnreadableFileError, match=f"{paths[3].name} ends before the pixel data"):
        run_job(read_dicom_job(tmp_path))


def _noise_nii_gz(path, shape=(64, 48, 20)):
    """A .nii.gz of uniform int16 noise: deflate cannot shrink it."""
    data = np.random.default_rng(8).integers(-32768, 32768, shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.8, 2.5, 1.0])), path)
    return data


def test_incompressible_nii_gz_is_inflated_once_by_python(tmp_path, monkeypatch):
    """No SimpleITK read and no second pass: one Python read, whose gzip checks the CRC."""
    path = tmp_path / "noise.nii.gz"
    data = _noise_nii_gz(path)
    assert path.stat().st_size >= reading.INCOMPRESSIBLE_FRACTION * (352 + data.nbytes)

    class Refused:
        def __init__(self, *args, **kwargs):
            raise AssertionError("SimpleITK was asked to read the voxels")

    reads = []
    original = validate.read_nibabel_voxels

    def counted(path, facts):
        reads.append(path)
        return original(path, facts)

    monkeypatch.setattr(reading.sitk, "ImageFileReader", Refused)
    monkeypatch.setattr(reading, "read_nibabel_voxels", counted)
    monkeypatch.setattr(reading, "gzip_ends_after", Refused)
    np.testing.assert_array_equal(read_volume(path).array, data.T)
    assert reads == [path]


def test_gzip_is_inflated_and_checksummed_by_isa_l(tmp_path, monkeypatch):
    """ISA-L, not zlib, inflates a noise .nii.gz and sums a SimpleITK-read one's voxels.

    The trailer's CRC-32 is checked on every file (SimpleITK never checks it); with zlib that
    check alone cost more than SimpleITK's whole read of a compressible 512x512x400 volume.
    """
    noise, smooth = tmp_path / "noise.nii.gz", tmp_path / "smooth.nii.gz"
    _noise_nii_gz(noise)
    nib.save(nib.Nifti1Image(np.zeros((64, 48, 20), np.int16), np.eye(4)), smooth)
    opened, summed = [], []
    real_open, real_crc = validate.igzip.open, validate.isal_zlib.crc32
    monkeypatch.setattr(validate.igzip, "open", lambda *a: opened.append(a[0]) or real_open(*a))
    monkeypatch.setattr(
        validate.isal_zlib,
        "crc32",
        lambda *a: summed.append(np.asarray(a[0]).nbytes) or real_crc(*a),
    )
    read_volume(noise)
    read_volume(smooth)
    assert opened == [noise]
    assert summed == [64 * 48 * 20 * 2]  # the smooth file's voxels, summed once


def _flip_a_voxel_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the stored voxels: inflates, but to other values
    path.write_bytes(bytes(raw))


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _run_on(path):
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(4096), 0))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_a_voxel_byte, "fails the gzip integrity check"),
        (_cut, "the file is truncated"),
        (_run_on, "runs on more than"),
    ],
    ids=["bit flip", "truncated", "runs on past the image"],
)
def test_damaged_incompressible_nii_gz_gets_its_clear_error(tmp_path, monkeypatch, damage, message):
    """Inflating once in Python keeps every check: checksum, length, and a bounded run-on."""
    monkeypatch.setattr(validate, "MAX_TRAILING_BYTES", 1024)  # the run-on case: 4 KB past
    path = tmp_path / "noise.nii.gz"
    _noise_nii_gz(path)
    damage(path)
    with pytest.raises(UnreadableFileError, match=message):
        read_volume(path)

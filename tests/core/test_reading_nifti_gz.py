"""Reading .nii.gz: SimpleITK inflates once, the gzip trailer vouches for its voxels.

Truth is nibabel's reading of the same file; every file is made here (nibabel, gzip).
"""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medai.core.io import reading, validate
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.validate import check_image_header, gzip_ends_after


def _ct(shape=(40, 36, 12), seed=3) -> np.ndarray:
    """An int16 CT-like block in nibabel's (x, y, z) order: air, tissue and noise."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-20, 21, shape) + np.where(rng.random(shape) < 0.6, 40, -1000)).astype(
        np.int16
    )


def _save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.8, 2.5, 1.0])), path)
    return path


def _spy_python_reads(monkeypatch) -> list[Path]:
    """Record each file whose voxels Python (nibabel's opener) reads."""
    calls: list[Path] = []
    original = validate.read_nibabel_voxels

    def spy(path, facts):
        calls.append(path)
        return original(path, facts)

    monkeypatch.setattr(reading, "read_nibabel_voxels", spy)
    return calls


def test_plain_nii_gz_is_inflated_by_simpleitk_only(tmp_path, monkeypatch):
    """A 3D int16 .nii.gz: SimpleITK's voxels, checked by the trailer, no Python inflation."""
    data = _ct()
    path = _save(tmp_path / "ct.nii.gz", data)
    python_reads = _spy_python_reads(monkeypatch)
    volume = read_volume(path)
    assert python_reads == []
    np.testing.assert_array_equal(volume.array, data.T)
    assert volume.array.flags.writeable


@pytest.mark.parametrize(
    "case",
    ["two gzip members", "data after the image", "big-endian", "scaled", "4D"],
)
def test_files_the_trailer_cannot_vouch_for_are_read_by_python(tmp_path, monkeypatch, case):
    """Whatever SimpleITK might read otherwise goes through nibabel, with the same values."""
    data = _ct()
    path = tmp_path / "ct.nii.gz"
    if case == "4D":
        data = np.stack([data, data[::-1]], axis=-1)
    header = nib.Nifti1Header(endianness=">" if case == "big-endian" else "<")
    image = nib.Nifti1Image(data, np.eye(4), header)
    if case == "scaled":
        image.header.set_slope_inter(2.0, -3.0)
    nib.save(image, path)
    if case == "two gzip members":  # valid gzip: the header, then the voxels, apart
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:352]) + gzip.compress(raw[352:]))
    if case == "data after the image":  # within MAX_TRAILING_BYTES: opens
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(64)))
    if case == "big-endian":
        assert nib.load(path).header.endianness == ">"
    python_reads = _spy_python_reads(monkeypatch)
    volume = read_volume(path)
    assert python_reads == [path]
    np.testing.assert_array_equal(volume.array, np.asarray(nib.load(path).dataobj).T)


def test_big_nii_gz_is_read_by_python_holding_one_copy(tmp_path, monkeypatch):
    """Above SITK_INFLATE_MAX_BYTES SimpleITK (two copies at its peak) is not asked."""
    data = _ct()
    path = _save(tmp_path / "ct.nii.gz", data)
    monkeypatch.setattr(reading, "SITK_INFLATE_MAX_BYTES", data.nbytes - 1)
    python_reads = _spy_python_reads(monkeypatch)
    np.testing.assert_array_equal(read_volume(path).array, data.T)
    assert python_reads == [path]


def test_gzip_ends_after_checks_length_and_checksum(tmp_path):
    data = _ct()
    path = _save(tmp_path / "ct.nii.gz", data)
    voxels = np.ascontiguousarray(data.T)
    assert gzip_ends_after(path, voxels, 352)
    changed = voxels.copy()
    changed[5, 6, 7] += 1  # one voxel off: the CRC-32 differs
    assert not gzip_ends_after(path, changed, 352)
    assert not gzip_ends_after(path, voxels[:-1].copy(), 352)  # the length differs
    assert not gzip_ends_after(path, voxels, 348)
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(path.read_bytes()[:-100])
    assert not gzip_ends_after(truncated, voxels, 352)


def test_python_reading_holds_one_copy_of_the_voxels(tmp_path):
    """The careful reader fills its array in pieces: the peak is one image, not two.

    nibabel's array_from_file reads a gzip stream into a temporary bytes object as
    big as the image and copies it: 2x. The array itself is mapped memory, which
    tracemalloc does not see, so Python's own allocations must stay at a few 4 MB
    pieces: the bound, half the image (32 MB), is far below any whole-image
    temporary, whatever the machine.
    """
    data = np.zeros((256, 256, 512), np.int16)  # 64 MB
    path = _save(tmp_path / "zeros.nii.gz", data)
    facts = check_image_header(path).nifti
    tracemalloc.start()
    try:
        voxels = validate.read_nibabel_voxels(path, facts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert voxels.shape == data.shape
    assert peak < 0.5 * data.nbytes

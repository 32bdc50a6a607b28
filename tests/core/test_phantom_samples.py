"""The synthetic phantom and the sample fetcher."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core import samples
from napari_medai.core.phantom import ORGANS, make_phantom
from napari_medai.core.samples import SampleFile, SampleUnavailableError, fetch_sample


def test_phantom_is_deterministic_with_realistic_hu(phantom):
    volume, labels = phantom
    again, _ = make_phantom(shape=(24, 64, 64), spacing=(6.0, 5.0, 5.0), seed=0)
    np.testing.assert_array_equal(volume.array, again.array)
    assert volume.array.dtype == np.int16
    assert volume.array.min() < -900
    liver = volume.array[labels.array == 1]
    assert abs(np.median(liver) - ORGANS[1][1]) < 10
    assert labels.geometry == volume.geometry
    assert not np.allclose(volume.geometry.direction, np.eye(3))


def test_liver_lies_on_the_patients_right(phantom):
    """LPS: the patient's right has negative x, whatever the grid's direction."""
    volume, labels = phantom
    liver = volume.geometry.index_to_world(np.argwhere(labels.array == 1)).mean(axis=0)
    spleen = volume.geometry.index_to_world(np.argwhere(labels.array == 2)).mean(axis=0)
    assert liver[2] < 0 < spleen[2]


def test_local_data_folder_is_hash_checked(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.bin").write_bytes(b"hello")
    good = SampleFile(
        "x/a.bin",
        "https://invalid/a.bin",
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    )
    monkeypatch.setenv(samples.DATA_ENV, str(tmp_path))
    assert fetch_sample(good).read_bytes() == b"hello"
    with pytest.raises(SampleUnavailableError, match="SHA-256"):
        fetch_sample(SampleFile("x/a.bin", good.url, "0" * 64))
    with pytest.raises(SampleUnavailableError, match="has no"):
        fetch_sample(SampleFile("x/missing.bin", good.url, "0" * 64))


def test_offline_download_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv(samples.DATA_ENV, raising=False)
    monkeypatch.setattr(samples.pooch, "os_cache", lambda name: tmp_path)
    unreachable = SampleFile("x/none.nii.gz", "http://127.0.0.1:9/none.nii.gz", "0" * 64)
    with pytest.raises(SampleUnavailableError, match="could not download"):
        fetch_sample(unreachable)


def test_shared_data_matches_the_pinned_hashes(shared_data, monkeypatch):
    monkeypatch.setenv(samples.DATA_ENV, str(shared_data))
    assert fetch_sample(samples.TOTALSEG_CT).is_file()
    assert fetch_sample(samples.TOTALSEG_SEG).is_file()

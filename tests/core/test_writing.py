"""core.io.writing: label maps saved with their exact grid, read back by SimpleITK and nibabel."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.errors import GeometryError, MedaiError, OutputExistsError
from napari_medai.core.geometry import GEOMETRY_TOLERANCE, Geometry
from napari_medai.core.io import writing
from napari_medai.core.io.reading import read_label_map
from napari_medai.core.io.writing import (
    label_sidecar,
    labels_outside,
    smallest_label_dtype,
    write_label_map,
    write_volume,
)
from napari_medai.core.volume import LabelMap, Volume

SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]


def oblique_direction() -> np.ndarray:
    """A (z, y, x) direction: rotated about two axes, with one axis flipped."""
    a, b = np.deg2rad([17.0, -28.0])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rz @ ry @ np.diag([1.0, -1.0, 1.0])


def make_label_map(values: np.ndarray, origin=(-301.75, 87.25, -120.5)) -> LabelMap:
    """Origin and spacing are exact in float32, as any geometry read from NIfTI is."""
    geometry = Geometry(spacing=(3.5, 1.25, 0.8125), origin=origin, direction=oblique_direction())
    return LabelMap(values, geometry, {"name": "seg"})


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = np.zeros((7, 12, 10), dtype=np.int64)
    values[rng.random(values.shape) > 0.6] = 3
    values[1:4, 2:6, 3:8] = 12
    return values


def sitk_geometry_of(image: sitk.Image) -> Geometry:
    """Independent (z, y, x) reading of a SimpleITK image's grid for comparison."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    return Geometry(image.GetSpacing()[::-1], image.GetOrigin()[::-1], direction[::-1, ::-1])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_with_simpleitk(tmp_path, labels, suffix):
    label_map = make_label_map(labels)
    path = write_label_map(label_map, tmp_path / f"seg{suffix}")

    image = sitk.ReadImage(str(path))

    assert sitk_geometry_of(image).is_close(label_map.geometry, GEOMETRY_TOLERANCE)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    assert image.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_with_nibabel(tmp_path, labels, suffix):
    label_map = make_label_map(labels)
    path = write_label_map(label_map, tmp_path / f"seg{suffix}")

    loaded = nib.load(path)
    # nibabel: (x, y, z) arrays and a RAS affine; LPS flips the x and y rows.
    lps_xyz = np.diag([-1.0, -1.0, 1.0, 1.0]) @ loaded.affine
    affine_zyx = np.eye(4)
    affine_zyx[:3, :3] = lps_xyz[:3, :3][::-1, ::-1]
    affine_zyx[:3, 3] = lps_xyz[:3, 3][::-1]

    np.testing.assert_allclose(affine_zyx, label_map.geometry.affine(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj).transpose(2, 1, 0), labels)
    assert loaded.get_data_dtype() == np.uint8


def test_round_trip_through_read_label_map(tmp_path, phantom):
    ct, organs = phantom
    path = write_label_map(organs, tmp_path / "organs.nii.gz")

    again = read_label_map(path, reference=ct)

    np.testing.assert_array_equal(again.array, organs.array)
    assert again.geometry.is_close(organs.geometry, GEOMETRY_TOLERANCE)
    assert again.metadata["warnings"] == []


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_double_precision_geometry_is_exact_in_nrrd_and_mha(tmp_path, labels, suffix):
    label_map = make_label_map(labels, origin=(-301.123456789, 87.987654321, -120.000000123))
    image = sitk.ReadImage(str(write_label_map(label_map, tmp_path / f"seg{suffix}")))
    assert sitk_geometry_of(image).is_close(label_map.geometry, 1e-9)


def test_nifti_rounding_of_double_precision_geometry_is_logged(tmp_path, labels, caplog):
    label_map = make_label_map(labels, origin=(-301.123456789, 87.987654321, -120.000000123))
    with caplog.at_level(logging.WARNING, logger="napari_medai.core.io.writing"):
        write_label_map(label_map, tmp_path / "seg.nii.gz")
    assert "seg.nii.gz" in caplog.text and ".nrrd" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_medai.core.io.writing"):
        write_label_map(make_label_map(labels), tmp_path / "exact.nii.gz")
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("low", "high", "dtype"),
    [
        (0, 255, np.uint8),
        (0, 256, np.uint16),
        (0, 70_000, np.uint32),
        (-1, 100, np.int8),
        (-200, 5, np.int16),
        (-1, 40_000, np.int32),
    ],
)
def test_smallest_dtype_and_values_unchanged(tmp_path, labels, low, high, dtype):
    values = labels.copy()
    values[0, 0, 0] = low
    values[-1, -1, -1] = high
    assert smallest_label_dtype(values) == dtype

    path = write_label_map(make_label_map(values), tmp_path / "seg.nrrd")

    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert stored.dtype == dtype
    np.testing.assert_array_equal(stored, values)


def test_overwrite_is_refused_unless_asked(tmp_path, labels):
    path = tmp_path / "seg.nii.gz"
    write_label_map(make_label_map(labels), path)
    before = path.read_bytes()

    with pytest.raises(OutputExistsError, match="seg.nii.gz"):
        write_label_map(make_label_map(labels * 2), path)
    assert path.read_bytes() == before

    write_label_map(make_label_map(labels * 2), path, overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), labels * 2)


def test_failed_write_leaves_no_file(tmp_path, labels, monkeypatch):
    existing = tmp_path / "kept.nrrd"
    write_label_map(make_label_map(labels), existing)
    kept = existing.read_bytes()

    def half_write(image, name, useCompression=False):
        with open(name, "wb") as handle:
            handle.write(b"NRRD0004\npartial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writing.sitk, "WriteImage", half_write)
    with pytest.raises(MedaiError, match="new.nrrd"):
        write_label_map(make_label_map(labels), tmp_path / "new.nrrd")
    with pytest.raises(MedaiError, match="kept.nrrd"):
        write_label_map(make_label_map(labels * 2), existing, overwrite=True)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.nrrd"]
    assert existing.read_bytes() == kept


@pytest.mark.parametrize("name", ["seg.png", "seg.tif", "seg.dcm", "seg"])
def test_unsupported_suffix_is_refused(tmp_path, labels, name):
    with pytest.raises(MedaiError, match=name.replace(".", r"\.")):
        write_label_map(make_label_map(labels), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_sheared_grid_is_refused_before_writing(tmp_path, labels):
    shear = np.array([[1.0, 0.0, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sheared = LabelMap(labels, Geometry(direction=shear / np.linalg.norm(shear, axis=0)))
    with pytest.raises(GeometryError):
        write_label_map(sheared, tmp_path / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == []


def _truncating_writer(original, keep: float):
    """SimpleITK's WriteImage as a full disk makes it: a short file and no exception."""

    def write(image, name, *args, **kwargs):
        original(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: int(len(data) * keep)])

    return write


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("keep", [0.0, 0.6, 0.98])
def test_short_write_keeps_the_earlier_file(tmp_path, labels, monkeypatch, suffix, keep):
    existing = tmp_path / f"mask{suffix}"
    write_label_map(make_label_map(labels), existing)
    before = existing.read_bytes()
    monkeypatch.setattr(writing.sitk, "WriteImage", _truncating_writer(sitk.WriteImage, keep))

    with pytest.raises(MedaiError, match=rf"mask{suffix}.*earlier file was kept"):
        write_label_map(make_label_map(labels * 2), existing, overwrite=True)

    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [existing.name]


def test_probability_maps_are_verified_too(tmp_path, monkeypatch):
    probability = Volume(np.linspace(0, 1, 7 * 12 * 10, dtype=np.float32).reshape(7, 12, 10))
    path = write_volume(probability, tmp_path / "prob.nii.gz")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(back, probability.array)
    before = path.read_bytes()
    monkeypatch.setattr(writing.sitk, "WriteImage", _truncating_writer(sitk.WriteImage, 0.9))
    with pytest.raises(MedaiError, match="earlier file was kept"):
        write_volume(probability, path, overwrite=True)
    assert path.read_bytes() == before


_FILE_SIZE_LIMITED_SAVE = """
import resource, signal, sys
import numpy as np
from napari_medai.core.errors import MedaiError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.volume import LabelMap, Volume

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
values = np.random.default_rng(1).integers(0, 200, (40, 64, 64)).astype(np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    write_label_map(LabelMap(values, Geometry()), sys.argv[1], overwrite=True)
except MedaiError as error:
    print(error)
    sys.exit(3)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_file_size_limit_keeps_the_earlier_file(tmp_path, labels, suffix):
    """A real short write: SimpleITK's NIfTI writer only prints to stderr when it happens."""
    existing = tmp_path / f"mask{suffix}"
    write_label_map(make_label_map(labels), existing)
    before = existing.read_bytes()

    child = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMITED_SAVE, str(existing)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )

    assert child.returncode == 3, child.stderr
    assert existing.name in child.stdout and "earlier file was kept" in child.stdout
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [existing.name]


def test_saving_onto_a_folder_says_so(tmp_path, labels):
    folder = tmp_path / "mask.nii.gz"
    folder.mkdir()
    with pytest.raises(MedaiError, match="folder"):
        write_label_map(make_label_map(labels), folder, overwrite=True)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_sidecar_has_names_volumes_and_no_identifiers(labels):
    label_map = make_label_map(labels)
    label_map.label_names = {3: "liver", 5: "spleen"}
    sidecar = label_sidecar(
        label_map,
        input_name="ct.nii.gz",
        outputs={"labels": "seg.nii.gz"},
        provenance={"source": "ct.nii.gz", "series_uid": "1.2.3", "time": "now"},
    )
    voxel_ml = 3.5 * 1.25 * 0.8125 / 1000
    assert sidecar["volumes_ml"] == {
        "liver": round(int(np.sum(labels == 3)) * voxel_ml, 3),
        "spleen": 0.0,
        "12": round(int(np.sum(labels == 12)) * voxel_ml, 3),
    }
    assert sidecar["label_names"] == {"3": "liver", "5": "spleen"}
    assert sidecar["time"] == "now"
    assert "1.2.3" not in json.dumps(sidecar)


def test_labels_outside_counts_voxels_off_the_target_grid(labels):
    label_map = make_label_map(labels)
    geometry = label_map.geometry
    assert labels_outside(label_map, geometry, labels.shape) == 0
    # A target grid one slice shorter: the labelled voxels of the last slice fall outside.
    assert labels_outside(label_map, geometry, (6, 12, 10)) == int(np.count_nonzero(labels[6]))


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path):
    """An OSError from the writer (here: no space left) names the file and folder, no traceback."""
    import errno

    from napari_medai.core.files import atomic_write

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(MedaiError) as raised:
        atomic_write(tmp_path / "mask.nii.gz", full)
    assert str(raised.value) == (
        f'Cannot save "mask.nii.gz" in the folder {tmp_path}: No space left on device'
    )
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """atomic_directory: the system refusing the temporary folder names the folder."""
    import errno
    import tempfile

    from napari_medai.core.files import atomic_directory

    def refused(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    expected = re.escape(f"you may not write in the folder {tmp_path} ")
    with pytest.raises(MedaiError, match=expected), atomic_directory(tmp_path / "model"):
        pass

"""The DICOM reader on small synthetic series written with pydicom.

Geometry truth comes from each written file's own header (read back with
pydicom), never from the reader's arithmetic.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import (
    header_world,
    modality_values,
    normal_of,
    rotation_iop,
    write_enhanced,
    write_series,
    write_structured_report,
)

from napari_medai.core.errors import SeriesSelectionError, UnreadableFileError
from napari_medai.core.io.dicom import (
    SeriesInfo,
    list_dicom_series,
    looks_like_dicom,
    read_dicom_job,
)
from napari_medai.core.jobs import Progress, run_job

SHAPE = (8, 16, 16)
OBLIQUE_IOP = rotation_iop((25.0, -15.0, 35.0))


def read(path: Path, **kwargs):
    return run_job(read_dicom_job(path, **kwargs))


def unique_pixels(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Stored values all distinct, so every output voxel names its source pixel."""
    size = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(size) + 100).reshape(shape).astype(np.uint16)


def world(volume, index: np.ndarray) -> np.ndarray:
    """World (x, y, z) LPS of (z, y, x) voxel indices, via the volume's Geometry."""
    return volume.geometry.index_to_world(index)[:, ::-1]


def continuous_index(volume, xyz: np.ndarray) -> np.ndarray:
    """The (z, y, x) index (fractional) of world (x, y, z) points."""
    geometry = volume.geometry
    matrix = geometry.direction @ np.diag(geometry.spacing)
    return np.linalg.solve(matrix, (np.atleast_2d(xyz)[:, ::-1] - geometry.origin).T).T


def assert_regular_geometry_exact(volume, paths, stored, slope=1.0, intercept=0.0):
    """Every voxel lies exactly (1e-6 mm) where its source pixel's header says."""
    rows, columns = (grid.ravel() for grid in np.indices(stored.shape[1:]))
    truth_by_value = {}
    for path, plane in zip(paths, stored):
        for value, point in zip(plane.ravel(), header_world(path, rows, columns)):
            truth_by_value[int(value)] = point
    values = np.rint((volume.array.astype(float) - intercept) / slope).astype(int)
    index = np.argwhere(np.ones(volume.array.shape, bool))
    truth = np.array([truth_by_value[v] for v in values.ravel()])
    np.testing.assert_allclose(world(volume, index), truth, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("slope", "intercept", "kind"),
    [(1.0, -1024.0, "i"), (0.25, -10.5, "f")],
    ids=["ct-hu", "fractional-rescale"],
)
def test_plain_series_applies_rescale_and_places_every_voxel(tmp_path, slope, intercept, kind):
    stored = unique_pixels()
    paths = write_series(tmp_path, stored, slope=slope, intercept=intercept)
    volume = read(tmp_path)
    assert volume.array.shape == SHAPE and volume.array.dtype.kind == kind
    truth = np.stack([modality_values(p) for p in paths])
    np.testing.assert_array_equal(volume.array, truth)
    assert_regular_geometry_exact(volume, paths, stored, slope, intercept)
    assert volume.metadata["warnings"] == []
    assert volume.metadata["window"] == [40.0, 400.0]


@pytest.mark.parametrize(
    "slopes",
    [[1, 1, 3, 3, 1, 2, 1, 1], [1, 1, 2.5, 1, 1, 1, 0.5, 1]],
    ids=["integer", "fractional"],
)
def test_rescale_that_changes_from_slice_to_slice(tmp_path, slopes):
    stored = unique_pixels(seed=11)
    intercepts = [-1024, -1024, -1000, -1000, 0, -7, -1024, 20]
    paths = write_series(tmp_path, stored, slope=slopes, intercept=intercepts)
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.array, np.stack([modality_values(p) for p in paths]))


def test_pydicom_decodes_what_simpleitk_cannot(tmp_path, monkeypatch):
    stored = unique_pixels(seed=12)
    paths = write_series(tmp_path, stored, slope=[1, 2] * 4, intercept=-1024)
    expected = read(tmp_path)

    refused: list[str] = []

    def refuse(self):
        refused.append(type(self).__name__)
        raise RuntimeError("GDCM cannot decode this transfer syntax")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", refuse)
    volume = read(tmp_path)
    np.testing.assert_array_equal(volume.array, np.stack([modality_values(p) for p in paths]))
    np.testing.assert_array_equal(volume.array, expected.array)
    assert volume.geometry == expected.geometry
    assert refused.count("ImageFileReader") == SHAPE[0]


def test_shuffled_files_are_sorted_by_position_not_name_or_number(tmp_path):
    stored = unique_pixels(seed=1)
    rng = np.random.default_rng(1)
    names = [f"{n:03d}.dcm" for n in rng.permutation(SHAPE[0])]
    instances = [int(n) for n in rng.permutation(SHAPE[0]) + 1]
    paths = write_series(tmp_path, stored, names=names, instances=instances, iop=OBLIQUE_IOP)
    volume = read(tmp_path)
    assert_regular_geometry_exact(volume, paths, stored)
    depth = [
        header_world(p, np.array([0]), np.array([0]))[0] @ normal_of(OBLIQUE_IOP) for p in paths
    ]
    np.testing.assert_array_equal(
        volume.array, np.stack([modality_values(p) for p in paths])[np.argsort(depth)]
    )


def test_oblique_series_geometry_is_exact_and_orthonormal(tmp_path):
    stored = unique_pixels(seed=2)
    paths = write_series(tmp_path, stored, iop=OBLIQUE_IOP, spacing=(0.6, 1.1), step=3.3)
    volume = read(tmp_path)
    assert volume.geometry.is_orthonormal
    np.testing.assert_allclose(volume.geometry.spacing, [3.3, 0.6, 1.1], atol=1e-9)
    assert_regular_geometry_exact(volume, paths, stored)


def test_rounding_jitter_keeps_the_stack_regular_and_quiet(tmp_path, capfd):
    jitter = np.array([0, 0.004, -0.003, 0.005, 0, 0.002, -0.004, 0])
    depths = np.arange(SHAPE[0]) * 2.5 + jitter
    positions = np.array([1.0, 2.0, 3.0]) + np.outer(depths, normal_of(OBLIQUE_IOP))
    paths = write_series(tmp_path, unique_pixels(seed=13), positions=positions, iop=OBLIQUE_IOP)
    volume = read(tmp_path)
    assert volume.metadata["warnings"] == [] and volume.array.shape == SHAPE
    assert "Non uniform sampling" not in capfd.readouterr().err
    corners = np.array([[k, 0, 0] for k in range(SHAPE[0])])
    truth = np.array([header_world(p, np.array([0]), np.array([0]))[0] for p in paths])
    np.testing.assert_allclose(world(volume, corners), truth, atol=0.006)


def linear_field(xyz: np.ndarray) -> np.ndarray:
    """A field linear in world position: linear interpolation must reproduce it."""
    return xyz @ np.array([3.0, -2.0, 5.0]) + 7.0


def write_field_series(folder: Path, positions, iop, spacing=(0.7, 0.8)) -> list[Path]:
    """Stored values = 10 x the linear field at each pixel's header position (slope 0.1)."""
    iop = np.asarray(iop, float)
    rows, columns = np.mgrid[: SHAPE[1], : SHAPE[2]]
    planes = []
    for position in positions:
        xyz = (
            np.asarray(position)
            + columns[..., None] * spacing[1] * iop[:3]
            + rows[..., None] * spacing[0] * iop[3:]
        )
        planes.append(np.rint(10 * linear_field(xyz)))
    stored = np.stack(planes).astype(np.int16)
    return write_series(folder, stored, positions=positions, iop=iop, spacing=spacing, slope=0.1)


def assert_resampled_field(volume):
    """Inside the slab the resampled values equal the field at each voxel's world point."""
    fill = volume.array.min()
    index = np.argwhere(volume.array > fill + 1e-3)
    assert len(index) > 0.5 * volume.array.size
    expected = linear_field(world(volume, index))
    np.testing.assert_allclose(volume.array[tuple(index.T)], expected, atol=0.11, rtol=0)


def assert_bright_voxel_lands(folder: Path, positions, iop, where: tuple[int, int, int]):
    """A single bright pixel comes out within half a voxel of its header position."""
    pixels = np.full(SHAPE, 100, np.uint16)
    pixels[where] = 3000
    paths = write_series(folder, pixels, positions=positions, iop=iop)
    volume = read(folder)
    peak = np.unravel_index(np.argmax(volume.array), volume.array.shape)
    truth = header_world(paths[where[0]], np.array([where[1]]), np.array([where[2]]))
    assert np.all(np.abs(continuous_index(volume, truth)[0] - peak) <= 0.5 + 1e-6)
    return volume


def tilted_positions(tilt_deg: float, gap: float = 2.0):
    """A gantry tilted about x: image planes tilt, the table still moves along z."""
    t = np.deg2rad(tilt_deg)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    positions = np.array([-20.0, -30.0, 40.0]) + np.outer(np.arange(SHAPE[0]) * gap, [0, 0, 1])
    return iop, positions


def test_gantry_tilt_is_resampled_with_every_pixel_in_place(tmp_path):
    iop, positions = tilted_positions(20.0)
    write_field_series(tmp_path / "field", positions, iop)
    volume = read(tmp_path / "field")
    assert volume.geometry.is_orthonormal
    np.testing.assert_allclose(volume.geometry.direction[::-1, 0], normal_of(iop), atol=1e-9)
    np.testing.assert_allclose(
        volume.geometry.spacing[0], 2.0 * np.cos(np.deg2rad(20.0)), atol=1e-6
    )
    (warning,) = volume.metadata["warnings"]
    assert "gantry tilt of 20.0 degrees" in warning and "resampled" in warning
    assert_resampled_field(volume)
    for n, where in enumerate([(1, 3, 12), (6, 14, 2)]):
        assert_bright_voxel_lands(tmp_path / f"bright{n}", positions, iop, where)


def test_uneven_gaps_are_resampled_to_the_smallest_gap(tmp_path):
    depths = np.array([0.0, 1.0, 2.5, 3.0, 5.0, 8.0, 9.0, 12.0])
    positions = np.array([5.0, -7.0, 11.0]) + np.outer(depths, normal_of(OBLIQUE_IOP))
    write_field_series(tmp_path / "field", positions, OBLIQUE_IOP)
    volume = read(tmp_path / "field")
    assert volume.array.shape[0] == 25
    np.testing.assert_allclose(volume.geometry.spacing, [0.5, 0.7, 0.8], atol=1e-6)
    (warning,) = volume.metadata["warnings"]
    assert "slices are unevenly spaced: 0.50 to 3.0 mm" in warning
    assert "regular 0.50 mm grid" in warning and "tilt" not in warning
    assert_resampled_field(volume)
    assert_bright_voxel_lands(tmp_path / "bright", positions, OBLIQUE_IOP, (3, 9, 4))


def test_missing_slice_is_reported_and_present_slices_stay_exact(tmp_path):
    stored = unique_pixels(shape=(9, 16, 16), seed=3)
    paths = write_series(tmp_path, stored, iop=OBLIQUE_IOP, step=2.0, intercept=-1024)
    paths[4].unlink()
    present = paths[:4] + paths[5:]
    volume = read(tmp_path)
    assert volume.array.shape == (9, 16, 16)
    np.testing.assert_allclose(volume.geometry.spacing[0], 2.0, atol=1e-6)
    (warning,) = volume.metadata["warnings"]
    assert "slice gap of 4.0 mm" in warning and "1 slice(s) missing" in warning
    for plane, path in zip([0, 1, 2, 3, 5, 6, 7, 8], present):
        np.testing.assert_array_equal(volume.array[plane], modality_values(path))
        corners = np.array([[plane, 0, 0], [plane, 15, 15], [plane, 3, 11]])
        truth = header_world(path, corners[:, 1], corners[:, 2])
        np.testing.assert_allclose(world(volume, corners), truth, atol=1e-6)
    between = (modality_values(paths[3]) + modality_values(paths[5])) / 2
    assert np.abs(volume.array[4] - between).max() <= 0.5


def test_two_series_largest_first_others_listed_and_selectable(tmp_path):
    big = write_series(tmp_path, unique_pixels(), description="big one")
    small = write_series(
        tmp_path,
        unique_pixels((5, 16, 16), 4),
        description="small one",
        names=[f"S{k}" for k in range(5)],
    )
    big_uid = str(pydicom.dcmread(big[0]).SeriesInstanceUID)
    small_uid = str(pydicom.dcmread(small[0]).SeriesInstanceUID)
    listed = list_dicom_series(tmp_path)
    assert listed == [
        SeriesInfo(big_uid, "big one", "CT", 8, 8),
        SeriesInfo(small_uid, "small one", "CT", 5, 5),
    ]
    volume = read(tmp_path)
    assert volume.array.shape[0] == 8 and volume.metadata["series_uid"] == big_uid
    assert volume.metadata["other_series"] == [
        {
            "uid": small_uid,
            "description": "small one",
            "modality": "CT",
            "n_files": 5,
            "n_slices": 5,
        }
    ]
    assert (
        small_uid in volume.metadata["warnings"][0] and "2 series" in volume.metadata["warnings"][0]
    )
    chosen = read(tmp_path, series_uid=small_uid)
    assert chosen.array.shape[0] == 5 and chosen.metadata["name"] == "small one"
    with pytest.raises(SeriesSelectionError) as error:
        read(tmp_path, series_uid="1.2.3.4.5")
    assert (
        "1.2.3.4.5" in str(error.value)
        and big_uid in str(error.value)
        and small_uid in str(error.value)
    )


def test_junk_resource_forks_and_reports_are_ignored(tmp_path):
    clean = tmp_path / "clean"
    messy = tmp_path / "messy"
    stored = unique_pixels(seed=5)
    write_series(clean, stored)
    write_series(messy / "series", stored)
    (messy / "notes.txt").write_text("scanned on Tuesday\n")
    (messy / "junk.bin").write_bytes(np.random.default_rng(0).bytes(4000))
    (messy / "__MACOSX" / "series").mkdir(parents=True)
    (messy / "__MACOSX" / "series" / "._IM0000.dcm").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
    (messy / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + bytes(64))
    write_structured_report(messy / "series" / "report.dcm")
    np.testing.assert_array_equal(read(messy).array, read(clean).array)
    assert read(messy).geometry == read(clean).geometry
    np.testing.assert_array_equal(read(messy / "DICOMDIR").array, read(clean).array)


def zip_folder(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            handle.write(path, f"DICOM/{path.relative_to(folder)}")
        for name, data in (extra or {}).items():
            handle.writestr(name, data)
    return archive


def test_zip_opens_and_ignores_macos_entries_and_cleans_up(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    stored = unique_pixels(seed=6)
    write_series(tmp_path / "series", stored)
    archive = zip_folder(
        tmp_path / "series",
        tmp_path / "study.zip",
        {
            "__MACOSX/DICOM/._IM0000.dcm": b"\x00\x05\x16\x07" + bytes(300),
            "DICOM/.DS_Store": bytes(64),
        },
    )
    volume = read(archive)
    np.testing.assert_array_equal(volume.array, read(tmp_path / "series").array)
    assert volume.metadata["source"] == "study.zip"
    assert list(scratch.iterdir()) == []
    job = read_dicom_job(archive)
    next(job)
    job.close()
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("entry", ["../evil.dcm", "/abs/evil.dcm", "DICOM/link"])
def test_zip_with_an_escaping_entry_is_refused(tmp_path, entry):
    write_series(tmp_path / "series", unique_pixels())
    archive = tmp_path / "inside" / "bad.zip"
    archive.parent.mkdir()
    zip_folder(tmp_path / "series", archive)
    with zipfile.ZipFile(archive, "a") as handle:
        info = zipfile.ZipInfo(entry)
        if entry.endswith("link"):
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, b"../../etc/passwd")
    with pytest.raises(UnreadableFileError, match=entry):
        read(archive)
    assert not (tmp_path / "evil.dcm").exists()


def test_blank_uids_still_group_into_series(tmp_path):
    stored = unique_pixels(seed=7)
    paths = write_series(tmp_path, stored, blank_uids=True, description="anonymous")
    write_series(
        tmp_path,
        unique_pixels((3, 16, 16)),
        blank_uids=True,
        description="other",
        names=["a", "b", "c"],
    )
    volume = read(tmp_path)
    assert volume.array.shape == SHAPE
    assert_regular_geometry_exact(volume, paths, stored)
    series = list_dicom_series(tmp_path)
    assert [s.n_files for s in series] == [8, 3]
    assert all(s.uid.startswith("blank-uid-") for s in series)
    assert read(tmp_path, series_uid=series[1].uid).metadata["name"] == "other"


def test_single_slice_and_a_file_meaning_its_series(tmp_path):
    single = write_series(tmp_path / "one", unique_pixels((1, 16, 16)), thickness=3.0)
    volume = read(single[0])
    assert volume.array.shape == (1, 16, 16)
    np.testing.assert_allclose(volume.geometry.spacing, [3.0, 0.7, 0.8])
    assert volume.metadata["name"] == "synthetic" and volume.metadata["source"] == single[0].name
    no_thickness = write_series(tmp_path / "thin", unique_pixels((1, 16, 16)), thickness=None)
    assert read(no_thickness[0]).geometry.spacing[0] == 1.0

    paths = write_series(tmp_path / "both", unique_pixels(), description="main")
    other = write_series(
        tmp_path / "both", unique_pixels((3, 16, 16)), names=["x", "y", "z"], description="side"
    )
    assert read(paths[2]).array.shape == SHAPE
    from_side = read(other[0])
    assert from_side.array.shape == (3, 16, 16) and from_side.metadata["name"] == "side"
    assert from_side.metadata["other_series"][0]["n_slices"] == 8


def test_dicom_without_an_image_is_refused_clearly(tmp_path):
    empty = write_series(tmp_path / "empty", unique_pixels((1, 16, 16)), with_pixels=False)[0]
    with pytest.raises(
        UnreadableFileError, match=f"{empty.name} holds no image \\(no pixel data\\)"
    ):
        read(empty)
    report = write_structured_report(tmp_path / "reports" / "sr.dcm")
    with pytest.raises(
        UnreadableFileError, match="sr.dcm is a DICOM structured report, not an image"
    ):
        read(report)
    with pytest.raises(UnreadableFileError, match="the folder reports holds no DICOM images"):
        read(report.parent)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(UnreadableFileError, match="the folder text holds no DICOM images"):
        read(tmp_path / "text")
    with pytest.raises(UnreadableFileError, match="a.txt is not a DICOM file"):
        read(tmp_path / "text" / "a.txt")


def test_two_time_points_open_as_channels(tmp_path):
    first, second = unique_pixels(seed=8), unique_pixels(seed=9)
    write_series(
        tmp_path, first, temporal=2, names=[f"b{k}" for k in range(8)], series_uid="1.2.826.0.9"
    )
    write_series(
        tmp_path, second, temporal=1, names=[f"a{k}" for k in range(8)], series_uid="1.2.826.0.9"
    )
    volume = read(tmp_path)
    assert volume.array.shape == (2, *SHAPE)
    np.testing.assert_array_equal(volume.array[0], second)
    np.testing.assert_array_equal(volume.array[1], first)


def test_enhanced_multiframe_uses_per_frame_positions_and_rescale(tmp_path):
    stored = unique_pixels((5, 16, 16), seed=10)
    depths = np.arange(5)[::-1] * 1.5
    positions = np.array([1.0, 2.0, 3.0]) + np.outer(depths, normal_of(OBLIQUE_IOP))
    slopes = [1.0, 2.0, 1.0, 3.0, 1.0]
    path = write_enhanced(tmp_path / "mf.dcm", stored, positions, iop=OBLIQUE_IOP, slopes=slopes)
    volume = read(path)
    order = np.argsort(depths)
    expected = (stored * np.array(slopes)[:, None, None])[order]
    np.testing.assert_array_equal(volume.array, expected)
    iop = np.asarray(OBLIQUE_IOP)
    index = np.array([[0, 0, 0], [4, 15, 3], [2, 7, 9]])
    frame = order[index[:, 0]]
    truth = (
        positions[frame]
        + np.outer(index[:, 2] * 0.6, iop[:3])
        + np.outer(index[:, 1] * 0.9, iop[3:])
    )
    np.testing.assert_allclose(world(volume, index), truth, atol=1e-6)


def test_looks_like_dicom(tmp_path):
    path = write_series(tmp_path, unique_pixels((1, 16, 16)))[0]
    assert looks_like_dicom(path)
    raw = tmp_path / "raw"
    raw.write_bytes(path.read_bytes()[132:])  # no preamble, no file meta prefix
    assert looks_like_dicom(raw)
    (tmp_path / "t.txt").write_text("DICM? no")
    assert not looks_like_dicom(tmp_path / "t.txt")
    assert not looks_like_dicom(tmp_path / "missing")


def test_progress_metadata_and_no_patient_identifiers(tmp_path):
    write_series(tmp_path, unique_pixels(), description="abdomen")
    events: list[Progress] = []
    volume = run_job(read_dicom_job(tmp_path), events.append)
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] == 1.0
    assert len(events) > SHAPE[0]
    assert set(volume.metadata) >= {
        "modality",
        "name",
        "series_uid",
        "source",
        "warnings",
        "window",
    }
    assert volume.metadata["modality"] == "CT" and volume.metadata["name"] == "abdomen"
    assert volume.metadata["source"] == tmp_path.name and os.sep not in volume.metadata["source"]
    assert "Doe" not in repr(volume.metadata) and "SECRET" not in repr(volume.metadata)

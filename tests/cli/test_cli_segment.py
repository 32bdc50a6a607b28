"""``napari-medai segment`` and ``models`` on a tiny model package and synthetic scans."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_scans import save_tiny_model
from dicom_factory import write_series

from napari_medai.cli import main
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.registry import MODELS_ENV
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.volume import volume_to_sitk


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A tiny two-class UNet that runs in LPS at 8 mm, so the CLI must map back."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-pkg")


@pytest.fixture(scope="module")
def scan(tmp_path_factory, phantom) -> Path:
    """The phantom CT (oblique, flipped grid) as NIfTI."""
    path = tmp_path_factory.mktemp("scans") / "phantom ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(phantom[0]), str(path))
    return path


def geometry_of(path: Path) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def assert_same_geometry(a: Path, b: Path) -> None:
    size_a, *grid_a = geometry_of(a)
    size_b, *grid_b = geometry_of(b)
    assert size_a == size_b
    for values_a, values_b in zip(grid_a, grid_b):
        np.testing.assert_allclose(values_a, values_b, rtol=0, atol=1e-6)


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


def test_segment_writes_mask_on_source_grid_and_sidecar(tmp_path, package, scan, capfd):
    out = tmp_path / "out"
    args = ["segment", str(scan), "--model", str(package), "--out", str(out), "--device", "cpu"]
    code = main([*args, "--probabilities"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    mask_path = out / "phantom-ct_tiny-seg_seg.nii.gz"
    assert captured.out.startswith(str(mask_path))
    assert "segmenting phantom ct.nii.gz [" in captured.err  # the progress bar
    assert_same_geometry(mask_path, scan)
    assert_same_geometry(out / "phantom-ct_tiny-seg_prob.nii.gz", scan)

    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
    # Identical to the core job with the same config (what the widget runs).
    expected = run_job(
        segment_job(read_volume(scan), load_model(package), SegmentConfig(device="cpu"))
    ).labels.array
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1}
    probability = sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / "phantom-ct_tiny-seg_prob.nii.gz"))
    )
    np.testing.assert_array_equal(probability > 0.5, mask == 1)

    sidecar = json.loads((out / "phantom-ct_tiny-seg_seg.json").read_text(encoding="utf-8"))
    weights = (package / "model.safetensors").read_bytes()
    assert sidecar["model"]["name"] == "tiny seg"
    assert sidecar["model"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert sidecar["settings"]["device"] == "cpu"
    assert sidecar["settings"]["probabilities"] is True
    assert sidecar["time"]
    assert sidecar["label_names"] == {"0": "background", "1": "organ"}
    assert sidecar["outputs"]["probability"] == "phantom-ct_tiny-seg_prob.nii.gz"
    voxel_ml = float(np.prod(geometry_of(scan)[1])) / 1000.0
    assert sidecar["volumes_ml"]["organ"] == pytest.approx((mask == 1).sum() * voxel_ml, rel=1e-6)


def test_nrrd_input_gives_nrrd_output(tmp_path, package, phantom, capfd):
    scan = tmp_path / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(phantom[0]), str(scan))
    assert main(["segment", str(scan), "--model", str(package), "--out", str(tmp_path)]) == 0
    assert_same_geometry(tmp_path / "ct_tiny-seg_seg.nrrd", scan)


def test_dicom_folder_input_and_no_patient_identifiers(tmp_path, package, capfd):
    pixels = np.random.default_rng(0).integers(0, 400, size=(6, 20, 24)).astype(np.int16)
    folder = tmp_path / "series"
    write_series(folder, pixels, spacing=(4.0, 4.0), step=5.0)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--model", str(package), "--out", str(out)]) == 0
    mask = out / "series_tiny-seg_seg.nii.gz"
    volume = read_volume(folder)
    written = sitk.ReadImage(str(mask))
    assert written.GetSize() == volume.spatial_shape[::-1]
    np.testing.assert_allclose(written.GetOrigin(), volume.geometry.origin[::-1], atol=1e-4)
    text = (out / "series_tiny-seg_seg.json").read_text(encoding="utf-8")
    assert "Doe" not in text and "SECRET-ID-42" not in text


def test_existing_output_needs_overwrite(tmp_path, package, scan, capfd):
    args = ["segment", str(scan), "--model", str(package), "--out", str(tmp_path)]
    assert main(args) == 0
    capfd.readouterr()
    assert main(args) == 2
    err = stderr_lines(capfd.readouterr().err)
    assert len(err) == 1 and "already exists" in err[0]
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("make_input", "model", "message"),
    [
        (lambda p: p / "missing.nii.gz", None, "no such file"),
        (lambda p: _write(p / "notes.txt", b"hello"), None, "not a scan"),
        (None, lambda p: str(p / "no-model.pt"), "no such file"),
        (None, lambda p: "not-a-known-model", "napari-medai models"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(
    tmp_path, package, scan, capfd, make_input, model, message
):
    source = make_input(tmp_path) if make_input else scan
    model_arg = model(tmp_path) if model else str(package)
    code = main(["segment", str(source), "--model", model_arg, "--out", str(tmp_path / "o")])
    captured = capfd.readouterr()
    assert code != 0
    lines = stderr_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("napari-medai segment: error:") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_damaged_scan_ends_with_one_error_line(tmp_path, package, capfd):
    source = _write(tmp_path / "broken.nii.gz", b"\x1f\x8b not really gzip")
    code = main(["segment", str(source), "--model", str(package), "--out", str(tmp_path)])
    lines = stderr_lines(capfd.readouterr().err)
    assert code != 0
    assert lines[-1].startswith("napari-medai segment: error:") and "broken.nii.gz" in lines[-1]
    assert [line for line in lines if "error" in line] == [lines[-1]]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_models_lists_names_first(tmp_path, package, monkeypatch, capfd):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my-liver").symlink_to(package, target_is_directory=True)
    monkeypatch.setenv(MODELS_ENV, str(folder))
    assert main(["models"]) == 0
    lines = capfd.readouterr().out.splitlines()
    names = [line.split("\t")[0] for line in lines]
    assert "my-liver" in names
    assert lines[names.index("my-liver")].split("\t")[1] == "package"
    # A listed name is what --model takes.
    out = tmp_path / "out"
    scan = tmp_path / "s.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(scan))
    assert main(["segment", str(scan), "--model", "my-liver", "--out", str(out)]) == 0
    assert (out / "s_tiny-seg_seg.nii.gz").is_file()


def test_models_shows_title_labels_and_deletes_with_confirmation(
    tmp_path, package, monkeypatch, capfd
):
    folder = tmp_path / "models"
    shutil.copytree(package, folder / "trained-20260101-120000")
    monkeypatch.setenv(MODELS_ENV, str(folder))
    assert main(["models"]) == 0
    [line] = [x for x in capfd.readouterr().out.splitlines() if x.startswith("trained-")]
    assert line.split("\t")[2].startswith("tiny seg · organ · ")

    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["models", "--delete", "trained-20260101-120000"]) == 1
    assert (folder / "trained-20260101-120000").is_dir()
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["models", "--delete", "trained-20260101-120000"]) == 0
    assert not (folder / "trained-20260101-120000").exists()
    assert main(["models", "--delete", "deepbet-brain", "--yes"]) == 2
    assert "only models there can be deleted" in capfd.readouterr().err


def test_a_scan_with_a_very_long_name_still_gets_its_outputs(tmp_path, package, capfd):
    """File names stop at 255 bytes: each part of an output's name is cut to 100 characters."""
    scan = tmp_path / ("patient-scan-" * 19 + ".nii.gz")  # a 254-byte name, near the limit
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(scan))
    out = tmp_path / "out"
    assert main(["segment", str(scan), "--model", str(package), "--out", str(out)]) == 0
    [mask] = out.glob("*_seg.nii.gz")
    assert len(mask.name) <= 255 and mask.name.startswith("patient-scan-patient-scan")

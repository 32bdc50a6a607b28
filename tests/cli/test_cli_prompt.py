"""``napari-medai prompt`` writes the object's mask on the scan's grid and prints a summary."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.cli import main
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk


@pytest.fixture
def scan_file(tmp_path):
    volume, labels = make_phantom(seed=0)  # 2.5 mm in-plane: the kidney is 18 voxels across
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(path))
    return path, labels.array == 3


def test_prompt_writes_the_mask_on_the_scan_grid(scan_file, tmp_path, capsys):
    path, kidney = scan_file
    inside = np.argwhere(kidney)
    prompts = {
        "boxes": [{"start": (inside.min(0) - 1).tolist(), "stop": (inside.max(0) + 1).tolist()}],
        "points": [{"zyx": inside.mean(0).round().astype(int).tolist(), "positive": True}],
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "mask.nii.gz"
    args = ["prompt", str(path), "--prompts", str(tmp_path / "p.json"), "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    written, scan = nib.load(out), nib.load(path)
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-4)
    mask = np.asarray(written.dataobj).transpose(2, 1, 0) == 1  # nibabel is (x, y, z)
    assert summary["voxels"] == np.count_nonzero(mask)
    voxel_ml = np.prod(written.header.get_zooms()) / 1000.0
    assert summary["ml"] == pytest.approx(summary["voxels"] * voxel_ml, rel=1e-3)
    assert summary["engine"] == "geodesic" and summary["seconds"] > 0
    # The phantom kidney is an ellipsoid 15 HU from its surroundings; a tight box and a
    # click gave Dice 0.864 here. 0.8 is the box-alone goal of the issue.
    dice = 2 * np.count_nonzero(mask & kidney) / (mask.sum() + kidney.sum())
    assert dice >= 0.8
    assert main(args) == 2  # the mask exists now: refused without --overwrite
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"boxes": [{"start": [1, 2, 3]}]}', 'boxes[0] has no "stop"'),
        ('{"points": [{"zyx": [1, 2, 3]}', "not valid JSON (line 1"),
        ('{"points": [{"zyx": [99, 2, 3]}]}', "point 0 at [99, 2, 3] (z, y, x) is outside"),
    ],
)
def test_bad_prompts_are_one_line_naming_the_field(scan_file, tmp_path, capsys, text, words):
    path, _ = scan_file
    (tmp_path / "p.json").write_text(text)
    out = tmp_path / "mask.nii.gz"
    assert (
        main(["prompt", str(path), "--prompts", str(tmp_path / "p.json"), "--out", str(out)]) == 2
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("napari-medai prompt: error:") and words in last
    assert not out.exists()


def test_an_unknown_engine_is_refused_before_reading(scan_file, tmp_path, capsys):
    path, _ = scan_file
    (tmp_path / "p.json").write_text('{"points": [{"zyx": [1, 2, 3]}]}')
    args = ["prompt", str(path), "--prompts", str(tmp_path / "p.json"), "--out", "m.nii.gz"]
    assert main([*args, "--engine", "sam"]) == 2
    assert 'no prompt engine "sam"' in capsys.readouterr().err

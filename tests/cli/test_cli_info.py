"""``napari-medai info`` prints the grid a scan will be shown on."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from napari_medai.cli import main
from napari_medai.core.volume import volume_to_sitk


def test_info_prints_shape_and_geometry(phantom, tmp_path, capsys):
    volume, _ = phantom
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(volume_to_sitk(volume), str(path))
    assert main(["info", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape_zyx"] == list(volume.array.shape)
    assert summary["modality"] == "CT"
    np.testing.assert_allclose(
        summary["geometry_zyx_lps_mm"]["direction"], volume.geometry.direction, atol=1e-9
    )


def test_info_on_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a scan")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("napari-medai info: error:") and "broken.nii.gz" in err[-1]

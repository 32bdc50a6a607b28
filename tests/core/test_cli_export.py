"""``napari-medai export``, ``stats`` and ``evaluate`` on small synthetic files."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import SimpleITK as sitk
from dicom_factory import write_series

from napari_medai.cli import main
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.volume import LabelMap, volume_to_sitk


def test_export_seg_against_a_dicom_series_then_force(tmp_path, capsys):
    folder = tmp_path / "series"
    write_series(folder, np.zeros((4, 12, 10), dtype=np.int16))
    volume = read_volume(folder)
    mask = np.zeros(volume.spatial_shape, dtype=np.uint8)
    mask[1:3, 2:8, 3:7] = 2
    labels_path = tmp_path / "mask.nii.gz"
    write_label_map(LabelMap(mask, volume.geometry), labels_path)
    (tmp_path / "mask.json").write_text(json.dumps({"label_names": {"2": "nodule"}}))
    out = tmp_path / "out" / "mask_seg.dcm"
    argv = ["export", str(labels_path), "--like", str(folder), "--out", str(out)]
    assert main([*argv, "--model", "net"]) == 0
    seg = pydicom.dcmread(out)
    assert seg.SegmentSequence[0].SegmentLabel == "nodule"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert str(out) in capsys.readouterr().out
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    # And back: the SEG to NRRD on the series' grid, names kept.
    back = tmp_path / "back.nrrd"
    assert main(["export", str(out), "--like", str(folder), "--out", str(back)]) == 0
    np.testing.assert_array_equal(read_label_map(back).array, mask)
    assert json.loads((tmp_path / "back.json").read_text())["label_names"] == {"2": "nodule"}
    assert main([*argv, "--force", "--format", "rtstruct"]) == 0
    assert pydicom.dcmread(out).Modality == "RTSTRUCT"
    assert main(["stats", str(out)]) == 2
    assert "give the scan" in capsys.readouterr().err


def test_stats_and_evaluate_on_the_phantom(tmp_path, phantom, capsys):
    volume, organs = phantom
    image, labels = tmp_path / "ct.nii.gz", tmp_path / "organs.nrrd"
    sitk.WriteImage(volume_to_sitk(volume), str(image))
    write_label_map(organs, labels)
    assert main(["stats", str(labels), "--image", str(image), "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = [int(v) for v in np.unique(organs.array) if v]
    assert lines[0].startswith("value,name,voxels") and len(lines) == len(values) + 1
    assert lines[1].split(",")[1] == organs.label_names[values[0]]  # names from the NRRD
    assert main(["evaluate", str(labels), str(labels)]) == 0
    scores = json.loads(capsys.readouterr().out)["labels"]
    assert [s["value"] for s in scores] == values
    assert all(s["dice"] == 1.0 and s["hd95_mm"] == 0.0 for s in scores)
    np.testing.assert_array_equal(read_label_map(labels).array, organs.array)

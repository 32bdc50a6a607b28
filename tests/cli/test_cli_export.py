"""``napari-medai export``, ``stats`` and ``evaluate`` on small synthetic files."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from napari_medai.cli import main
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.phantom import make_phantom
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


# --- a folder the user may not write ---------------------------------------------------------

#: prctl(2) option and capabilities: root without them is refused by file modes like anyone.
_PR_CAPBSET_DROP = 24
_FILE_POWERS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _as_unprivileged() -> None:
    """preexec_fn: drop root's power over file modes from the child's capabilities.

    The uid stays 0 (the interpreter may live in root's home), but without these
    capabilities the kernel checks file modes as for any user.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _FILE_POWERS:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def _run_unprivileged(*args: str) -> subprocess.CompletedProcess:
    preexec = _as_unprivileged if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, preexec_fn=preexec, timeout=120
    )


@pytest.fixture
def locked(tmp_path):
    """A folder the child process may read but not write."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        try:
            _run_unprivileged("-c", "pass")
        except subprocess.SubprocessError as error:
            pytest.skip(f"cannot drop root's file capabilities here ({error})")
        os.chown(folder, 65534, 65534)  # nobody's: root without capabilities is "other"
        folder.chmod(0o755)
    else:
        folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.fixture
def scan_and_mask(tmp_path):
    volume, organs = make_phantom(shape=(6, 16, 20), spacing=(4.0, 2.0, 2.0), seed=0)
    image, mask = tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(image))
    write_label_map(organs, mask)
    return image, mask


def _one_error_line(result: subprocess.CompletedProcess, command: str, folder) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith(f"napari-medai {command}: error: ")
    assert f"you may not write in the folder {folder} (permission denied)" in last
    return last


@pytest.mark.parametrize("name", ["out.nii.gz", "new/sub/out.nrrd", "seg.mha"])
def test_export_into_a_folder_the_user_cannot_write_says_so_in_one_line(
    locked, scan_and_mask, name
):
    image, mask = scan_and_mask
    out = locked / name
    cli = ("-m", "napari_medai.cli", "export", str(mask), "--like", str(image), "--out", str(out))
    result = _run_unprivileged(*cli)
    assert f'Cannot save "{out.name}"' in _one_error_line(result, "export", locked)
    assert list(locked.iterdir()) == []


def test_evaluate_out_into_a_folder_the_user_cannot_write(locked, scan_and_mask):
    _, mask = scan_and_mask
    out = locked / "scores.json"
    result = _run_unprivileged(
        "-m", "napari_medai.cli", "evaluate", str(mask), str(mask), "--out", str(out)
    )
    _one_error_line(result, "evaluate", locked)


def test_the_label_writer_refuses_a_folder_the_user_cannot_write(locked, scan_and_mask):
    """The writer napari's Save calls: a MedaiError naming the folder, no PermissionError."""
    _, mask = scan_and_mask
    script = (
        "from napari_medai.core.errors import MedaiError\n"
        "from napari_medai.core.io.reading import read_label_map\n"
        "from napari_medai.core.io.writing import write_label_map\n"
        f"labels = read_label_map({str(mask)!r})\n"
        "try:\n"
        f"    write_label_map(labels, {str(locked / 'mask.nrrd')!r})\n"
        "except MedaiError as error:\n"
        "    print(error)\n"
    )
    result = _run_unprivileged("-c", script)
    assert result.returncode == 0, result.stderr
    assert f"you may not write in the folder {locked} (permission denied)" in result.stdout


def test_a_file_system_refusal_outside_core_files_is_one_line(monkeypatch, capsys):
    """The CLI's last net: an OSError naming a path prints one line, not a traceback."""
    import napari_medai.cli.info as info

    def refused(args):
        raise PermissionError(13, "Permission denied", "/somewhere/out")

    monkeypatch.setattr(info, "run", refused)
    assert main(["info", "x.nii"]) == 2
    assert capsys.readouterr().err == (
        "napari-medai info: error: cannot use /somewhere/out: Permission denied\n"
    )

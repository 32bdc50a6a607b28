"""Recovery copies: saved on the scan's grid, listed, read back exactly, pruned by age and size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from napari_medai.core import recovery
from napari_medai.core.phantom import make_phantom
from napari_medai.core.recovery import RecoveryError


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "recovery"
    monkeypatch.setenv(recovery.RECOVERY_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def painted():
    """Phantom organ labels with names, on the phantom's oblique grid."""
    _, labels = make_phantom(shape=(12, 32, 32), spacing=(6.0, 5.0, 5.0), seed=0)
    return labels


def _orphan(painted, name: str):
    """A copy saved by a process that has since ended, as a killed napari leaves one."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = recovery._process_started(child.pid)
    child.wait()
    entry = replace(recovery.new_entry(name, "scan"), pid=child.pid, started=started)
    return recovery.save_copy(entry, painted)


def test_the_folder_is_the_environment_override(root):
    assert recovery.recovery_folder() == root


def test_a_saved_copy_reads_back_voxel_for_voxel_with_names_and_exact_grid(root, painted):
    entry = recovery.save_copy(recovery.new_entry("my liver", "phantom CT"), painted)

    [listed] = recovery.list_entries()
    assert listed.id == entry.id and listed.layer == "my liver" and listed.scan == "phantom CT"
    back = recovery.read_copy(recovery.find_entry(entry.id))
    np.testing.assert_array_equal(back.array, painted.array)
    # The sidecar's float64 grid, not NIfTI's float32 one: the scan's numbers exactly.
    assert back.geometry == painted.geometry
    assert back.label_names == painted.label_names
    # An independent reader sees the same voxels (NIfTI is x, y, z).
    on_disk = np.asarray(nib.load(entry.labels_path).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(on_disk, painted.array)


def test_a_copy_of_this_process_is_running_and_one_of_a_killed_process_is_orphaned(root, painted):
    live = recovery.save_copy(recovery.new_entry("live", "scan"), painted)
    dead = _orphan(painted, "killed")

    assert live.is_running() and not dead.is_running()
    assert [entry.id for entry in recovery.orphaned()] == [dead.id]
    summary = dead.summary()
    assert set(summary) == {"id", "layer", "scan", "time", "running"}
    assert summary["running"] is False and json.dumps(summary)


def test_a_reused_process_id_is_not_taken_for_the_writer(root, painted):
    entry = recovery.save_copy(recovery.new_entry("labels", "scan"), painted)
    # Same pid, another start time: the napari that wrote it has gone.
    recycled = replace(entry, started=entry.started - 100.0)
    assert not recycled.is_running()


def test_an_adopted_copy_belongs_to_this_process(root, painted):
    entry = _orphan(painted, "old")

    adopted = recovery.adopt(entry, "old (recovered)")

    [listed] = recovery.list_entries()
    assert listed.pid == os.getpid() and listed.is_running() and listed.layer == "old (recovered)"
    assert adopted.id == entry.id


def test_an_unknown_id_is_refused_in_words(root):
    with pytest.raises(RecoveryError, match="recover --list"):
        recovery.find_entry("no-such-copy")


def test_a_folder_without_its_record_is_not_listed_and_pruned_after_an_hour(root, painted):
    entry = recovery.save_copy(recovery.new_entry("labels", "scan"), painted)
    (entry.folder / recovery.ENTRY_FILE).unlink()  # killed during its first save

    assert recovery.list_entries() == []
    recovery.prune(now=time.time() + 60)
    assert entry.folder.exists()
    recovery.prune(now=time.time() + 2 * 3600)
    assert not entry.folder.exists()


def test_a_damaged_copy_is_refused_naming_it(root, painted):
    entry = recovery.save_copy(recovery.new_entry("labels", "scan"), painted)
    entry.labels_path.write_bytes(b"not a nifti")

    with pytest.raises(RecoveryError, match=f'{entry.id} of "labels" cannot be read'):
        recovery.read_copy(entry)


def _stamped(entry, saved: float):
    """``entry`` as if last saved at ``saved`` (seconds since the epoch)."""
    stamped = replace(entry, time=saved)
    recovery._write_entry(stamped)
    return stamped


def test_prune_drops_old_copies_then_the_oldest_beyond_the_size_limit(root, painted):
    now = time.time()
    ancient = _stamped(_orphan(painted, "ancient"), now - 30 * 86400)
    older = _stamped(_orphan(painted, "older"), now - 2 * 86400)
    newer = _stamped(_orphan(painted, "newer"), now - 86400)
    # Older than any, but its napari still runs: kept, and counted in the folder's size.
    mine = recovery.save_copy(recovery.new_entry("live", "scan"), painted)
    live = _stamped(mine, now - 40 * 86400)
    one_copy = recovery._folder_bytes(newer.folder)

    # Room for two and a half copies: the age rule drops one, the size rule the oldest left.
    pruned = recovery.prune(max_age_days=14, max_bytes=int(2.5 * one_copy), now=now)

    assert pruned == [ancient.id, older.id]
    assert {entry.id for entry in recovery.list_entries()} == {newer.id, live.id}


def test_the_cli_lists_copies_and_writes_one_on_its_grid(root, painted, tmp_path, capsys):
    from napari_medai.cli import main
    from napari_medai.core.io.reading import read_label_map

    entry = _orphan(painted, "my liver")

    assert main(["recover", "--list"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == entry.id and listed["layer"] == "my liver" and listed["scan"] == "scan"
    out = tmp_path / "out" / "liver.nrrd"
    assert main(["recover", entry.id, "--out", str(out)]) == 0
    back = read_label_map(out)  # NRRD keeps the grid in full precision
    np.testing.assert_array_equal(back.array, painted.array)
    assert back.geometry.is_close(painted.geometry)
    sidecar = json.loads((out.parent / "liver.json").read_text(encoding="utf-8"))
    assert sidecar["outputs"] == {"labels": "liver.nrrd"}
    assert sidecar["label_names"]["1"] == "liver"


def test_the_cli_refuses_an_unknown_id_and_an_existing_file_in_one_line(
    root, painted, tmp_path, capsys
):
    from napari_medai.cli import main

    entry = _orphan(painted, "labels")
    assert main(["recover", "nope", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "'napari-medai recover --list' shows the ids" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert main(["recover", entry.id, "--out", str(tmp_path / "x.nii.gz")]) == 2
    error = capsys.readouterr().err
    assert "x.json already exists" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()  # refused before writing either file

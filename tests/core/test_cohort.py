"""Cohort runs on the local engine: manifest, run record, resume, bad scans, a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cohort_scans import save_tiny_model, write_cohort, write_manifest

from napari_medai.cli import main
from napari_medai.core.classification.config import ClassifyConfig
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.distributed.cohort import cohort_job
from napari_medai.core.distributed.manifest import ManifestError, read_manifest
from napari_medai.core.distributed.record import RECORD_FILE, TABLE_FILE, RunRecord
from napari_medai.core.distributed.tasks import TaskSpec
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def cohort(tmp_path) -> list[Path]:
    """Four phantoms on different grids, a truncated NIfTI and a text file named .nrrd."""
    return write_cohort(tmp_path / "scans", phantoms=4)


def spec_for(model: Path) -> TaskSpec:
    return TaskSpec("segment", str(model), device="cpu")


def test_manifest_csv_folder_and_glob_give_the_same_stable_ids(tmp_path, cohort):
    manifest = write_manifest(tmp_path / "cohort.csv", cohort)
    from_csv = read_manifest(manifest)
    from_folder = read_manifest(tmp_path / "scans")
    from_glob = read_manifest(str(tmp_path / "scans" / "*"))
    assert [i.path for i in from_csv] == [str(p.resolve()) for p in cohort]
    assert {i.id for i in from_csv} == {i.id for i in from_folder} == {i.id for i in from_glob}
    assert from_csv[0].id.startswith("phantom0-")
    # Ids come from paths relative to the manifest: moving the cohort keeps them.
    moved = tmp_path / "moved"
    (tmp_path / "scans").rename(moved)
    assert {i.id for i in read_manifest(moved)} == {i.id for i in from_folder}
    manifest.write_text("path\nmoved/phantom0.nii.gz\n./moved/phantom0.nii.gz\n")
    with pytest.raises(ManifestError, match="listed twice"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match="not a CSV manifest"):
        read_manifest(tmp_path / "nothing-here")


def test_local_run_records_bad_scans_and_resumes(tmp_path, cohort, model):
    out = tmp_path / "out"
    items = read_manifest(tmp_path / "scans")
    summary = run_job(cohort_job(items, spec_for(model), out))
    assert (summary.done, summary.failed, summary.skipped) == (4, 2, 0)
    rows = {row["id"]: row for row in summary.rows}
    failed = {Path(row["input"]).name: row["error"] for row in rows.values() if row["error"]}
    assert set(failed) == {"truncated.nii.gz", "notes.nrrd"}
    assert all("\n" not in reason and reason for reason in failed.values())

    # Each output is named by its scan's id and equals a direct segment_job on the scan.
    first, second, third = (
        next(i for i in items if i.path.endswith(f"phantom{n}.nii.gz")) for n in range(3)
    )
    assert rows[first.id]["outputs"] == [f"{first.id}_seg.nii.gz", f"{first.id}_seg.json"]
    volume = read_volume(first.path)
    expected = run_job(
        segment_job(volume, load_model(model), SegmentConfig(device="cpu"))
    ).labels.array
    written = read_label_map(out / f"{first.id}_seg.nii.gz", reference=volume)
    np.testing.assert_array_equal(written.array, expected)
    sidecar = json.loads((out / f"{first.id}_seg.json").read_text())
    assert sidecar["input_id"] == first.id and sidecar["model"]["name"] == "tiny seg"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len((out / TABLE_FILE).read_text().splitlines()) == 1 + len(items)

    # Re-run: done scans are skipped, failed ones retried.
    again = run_job(cohort_job(items, spec_for(model), out))
    assert (again.done, again.failed, again.skipped) == (0, 2, 4)

    # A changed input is redone; a deleted output is remade.
    Path(first.path).write_bytes(Path(second.path).read_bytes())
    os.remove(out / f"{third.id}_seg.nii.gz")
    changed = run_job(cohort_job(read_manifest(tmp_path / "scans"), spec_for(model), out))
    assert {row["id"] for row in changed.rows if row["status"] == "done"} == {
        first.id,
        third.id,
    }
    assert RunRecord(out).latest[first.id]["input_sha256"] != rows[first.id]["input_sha256"]


def test_torn_record_line_is_ignored_and_later_lines_stay_whole(tmp_path):
    record = RunRecord(tmp_path)
    record.append({"id": "a", "status": "done"})
    with open(tmp_path / RECORD_FILE, "a") as handle:
        handle.write('{"id": "b", "sta')  # the driver was killed mid-line
    reread = RunRecord(tmp_path)
    assert set(reread.latest) == {"a"}
    reread.append({"id": "c", "status": "failed"})
    assert set(RunRecord(tmp_path).latest) == {"a", "c"}


def test_cli_prints_summary_and_fails_when_scans_failed(tmp_path, cohort, model, capsys):
    manifest = write_manifest(tmp_path / "cohort.csv", cohort[-3:])
    args = ["cohort", "segment", str(manifest), "--model", str(model), "--out", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 1
    printed = capsys.readouterr()
    assert "1 done / 2 failed / 0 skipped of 3" in printed.out
    assert "not a valid NRRD file" in printed.out
    assert "scans/s" in printed.err


def test_killed_driver_resumes_with_only_unfinished_scans(tmp_path, model):
    scans = write_cohort(tmp_path / "scans", phantoms=5, broken=False)
    out = tmp_path / "out"
    code = "import sys; from napari_medai.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "cohort", "segment", str(tmp_path / "scans")]
    command += ["--model", str(model), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record = out / RECORD_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.poll() is None:
        if record.is_file() and len(record.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished_before = set(RunRecord(out).latest)
    assert 2 <= len(finished_before) < len(scans), driver.stderr.read().decode()[-500:]

    items = read_manifest(tmp_path / "scans")
    summary = run_job(cohort_job(items, spec_for(model), out))
    assert {row["id"] for row in summary.rows} == {i.id for i in items} - finished_before
    assert summary.skipped == len(finished_before) and summary.failed == 0
    for item in items:
        assert (out / f"{item.id}_seg.nii.gz").is_file() and (out / f"{item.id}_seg.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_local_classify_run_writes_one_json_per_scan_and_resumes(tmp_path):
    card = ModelCard(
        name="tiny cls",
        architecture="DenseNet",
        architecture_args={"init_features": 4, "growth_rate": 4, "block_config": [1], "bn_size": 1},
        label_names={0: "normal", 1: "lesion"},
        patch_size=[8, 16, 16],
        spacing=[12.0, 10.0, 10.0],
        task="classification",
        spatial_dims=3,
        intensity={"kind": "window", "low": -160, "high": 240},
    )
    torch.manual_seed(0)
    package = save_model_package(tmp_path / "cls", card, build_network(card))
    scans = write_cohort(tmp_path / "scans", phantoms=3)[:4]  # three phantoms and a truncated one
    items = read_manifest(write_manifest(tmp_path / "cohort.csv", scans))
    spec = TaskSpec("classify", str(package), device="cpu")
    out = tmp_path / "out"

    summary = run_job(cohort_job(items, spec, out))
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 0)
    failed = [row for row in summary.rows if row["status"] == "failed"]
    assert Path(failed[0]["input"]).name == "truncated.nii.gz" and failed[0]["error"]

    # Each JSON equals a direct whole-volume classify_job and names the scan by its id only.
    model = load_model(package)
    for item in items[:3]:
        written = json.loads((out / f"{item.id}_class.json").read_text())
        expected = run_job(
            classify_job(read_volume(item.path), model, ClassifyConfig(device="cpu"))
        ).predictions[0]
        assert written["class"] == expected.name and written["label"] == expected.label
        probabilities = written["probabilities"]
        assert list(probabilities) == ["normal", "lesion"]
        np.testing.assert_allclose(list(probabilities.values()), expected.probabilities, atol=1e-5)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert written["model"]["name"] == "tiny cls" and written["model"]["sha256"] == model.sha256
        assert written["settings"]["scope"] == "volume" and written["input_id"] == item.id
        assert Path(item.path).name not in json.dumps(written)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    again = run_job(cohort_job(items, spec, out))
    assert (again.done, again.failed, again.skipped) == (0, 1, 3)

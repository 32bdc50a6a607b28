"""Cohort runs on the local engine: manifest, run record, resume, bad scans, a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cohort_scans import save_tiny_classifier, save_tiny_model, write_cohort, write_manifest

from napari_medai.cli import main
from napari_medai.core.classification.config import ClassifyConfig
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.cohort.manifest import (
    CohortWarning,
    ManifestError,
    ScanItem,
    fingerprint,
    read_manifest,
)
from napari_medai.core.cohort.record import RECORD_FILE, TABLE_FILE, RunRecord
from napari_medai.core.cohort.run import cohort_job
from napari_medai.core.cohort.tasks import TaskSpec, failed_row
from napari_medai.core.errors import MedaiError
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
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
    spec = TaskSpec("segment", "model")
    row = {id_: failed_row(ScanItem(f"{id_}.nii.gz", id_, "f"), spec, "bad") for id_ in "abc"}
    record = RunRecord(tmp_path)
    record.append(row["a"])
    with open(tmp_path / RECORD_FILE, "a") as handle:
        handle.write('{"id": "b", "sta')  # the driver was killed mid-line
    reread = RunRecord(tmp_path)
    assert set(reread.latest) == {"a"} and not reread.damaged
    reread.append(row["c"])
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
    package = save_tiny_classifier(tmp_path / "cls")
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


def test_an_output_folder_inside_the_cohort_is_never_a_scan(tmp_path, model):
    scans = write_cohort(tmp_path / "scans", phantoms=2, broken=False)
    out = tmp_path / "scans" / "masks"
    first = run_job(cohort_job(read_manifest(tmp_path / "scans"), spec_for(model), out))
    assert (first.done, first.failed) == (2, 0)

    # Re-runs: the folder lists 'masks', a recursive glob lists the masks themselves.
    for source in (tmp_path / "scans", str(tmp_path / "scans" / "**" / "*.nii.gz")):
        with pytest.warns(CohortWarning, match="not taken as scans"):
            again = run_job(cohort_job(read_manifest(source), spec_for(model), out))
        assert (again.done, again.failed, again.skipped) == (0, 0, 2)
    # Another run's output folder (it holds a run record) is not a scan either.
    other = tmp_path / "scans" / "masks_v1"
    other.mkdir()
    (other / RECORD_FILE).write_text("")
    (other / "phantom0-0123abcd_seg.nii.gz").write_bytes(scans[0].read_bytes())
    glob = str(tmp_path / "scans" / "**" / "*.nii.gz")
    with pytest.warns(CohortWarning, match="not taken as scans"):
        again = run_job(cohort_job(read_manifest(glob), spec_for(model), out))
    assert (again.done, again.failed, again.skipped) == (0, 0, 2)

    # Outputs written among the scans, or inside a scan folder, are refused up front.
    with pytest.raises(MedaiError, match="every scan of the cohort lies in an output folder"):
        cohort_job(read_manifest(tmp_path / "scans"), spec_for(model), tmp_path / "scans")
    with pytest.raises(MedaiError, match="lies inside the scan folder"):
        cohort_job(read_manifest(tmp_path / "scans"), spec_for(model), out / "deeper")


def test_out_naming_a_file_is_one_clear_line(tmp_path, cohort, model, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    args = ["cohort", "segment", str(tmp_path / "scans"), "--model", str(model)]
    assert main([*args, "--out", str(taken), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "is a file, not a folder" in error
    assert taken.read_text() == "not a folder"


def test_manifest_needs_a_path_column_and_reads_tabs(tmp_path, cohort):
    first, second = (p.relative_to(tmp_path).as_posix() for p in cohort[:2])
    expected = [str(p.resolve()) for p in cohort[:2]]
    no_column = tmp_path / "cohort.csv"
    no_column.write_text(f"patient,age\n{first},61\n{second},70\n")
    with pytest.raises(ManifestError, match=r"cohort.csv: .*\(patient, age\).*path, file"):
        read_manifest(no_column)
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text(f"path;age\n{first};61\n")
    with pytest.raises(ManifestError, match="names no scan path column"):
        read_manifest(semicolons)
    # Tab-separated, by suffix or by content, is read by its columns (not as whole lines).
    for name in ("cohort.tsv", "tabs.csv"):
        tabs = tmp_path / name
        tabs.write_text(f"age\tpath\n61\t{first}\n70\t{second}\n")
        assert [item.path for item in read_manifest(tabs)] == expected
    # Scan paths without a header still work.
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{first}\n{second}\n")
    assert [item.path for item in read_manifest(bare)] == expected
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"path\nM\xfcller.nii.gz\n")
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        read_manifest(latin)


def test_scans_outside_the_manifest_folder_are_read_and_said(tmp_path, cohort):
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "cohort.csv"
    manifest.write_text(f"path\n../scans/{cohort[0].name}\n{cohort[1]}\n")
    with pytest.warns(CohortWarning, match=r"cohort.csv: 2 scan\(s\) lie outside its folder"):
        items = read_manifest(manifest)
    assert [item.path for item in items] == [str(p.resolve()) for p in cohort[:2]]


def _rewrite_record(out: Path, change) -> None:
    """Apply ``change(row)`` to every row of the run record (a hand edit)."""
    rows = [json.loads(line) for line in (out / RECORD_FILE).read_text().splitlines()]
    for row in rows:
        change(row)
    (out / RECORD_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_damaged_run_record_is_never_trusted(tmp_path, model):
    write_cohort(tmp_path / "scans", phantoms=4, broken=False)
    out = tmp_path / "out"
    items = read_manifest(tmp_path / "scans")
    first = run_job(cohort_job(items, spec_for(model), out))
    assert first.done == 4
    names = [item.id for item in items]
    edits = {
        names[0]: {"outputs": ["/etc/passwd"]},  # a file that exists, outside the output folder
        names[1]: {"outputs": []},  # done, yet nothing written
        names[2]: {"seconds": "fast"},
        names[3]: {"id": ["not", "text"]},
    }
    for name in names[:3]:
        os.remove(out / f"{name}_seg.nii.gz")  # the outputs are gone, as the edits claim
    _rewrite_record(out, lambda row: row.update(edits.get(row["id"], {})))
    with pytest.warns(
        CohortWarning, match=r"2 row\(s\).*cohort_record.jsonl, line 1: field .outputs."
    ):
        again = run_job(cohort_job(items, spec_for(model), out))
    assert {row["id"] for row in again.rows if row["status"] == "done"} == set(names)
    for name in names:
        assert (out / f"{name}_seg.nii.gz").is_file()
    table = (out / TABLE_FILE).read_text()
    assert "/etc/passwd" not in table and "fast" not in table


def test_a_model_for_another_task_is_refused_before_any_scan(tmp_path, cohort, model):
    classifier = save_tiny_classifier(tmp_path / "cls")
    items = read_manifest(tmp_path / "scans")
    wrong = {
        "segment": (classifier, "'tiny cls' is a classification model"),
        "classify": (model, "'tiny seg' is a segmentation model"),
    }
    for task, (package, message) in wrong.items():
        out = tmp_path / f"out_{task}"
        with pytest.raises(MedaiError, match=message):
            run_job(cohort_job(items, TaskSpec(task, str(package), device="cpu"), out))
        assert not (out / RECORD_FILE).exists()


def test_an_edit_keeping_size_and_modification_time_changes_the_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.nii"
    big.write_bytes(rng.bytes(3 << 20))
    folder = tmp_path / "series"
    folder.mkdir()
    for index in range(300):
        (folder / f"slice{index:03d}.dcm").write_bytes(rng.bytes(20_000))
    for path, file, offset in [
        (big, big, 10),  # in the first MiB
        (big, big, (3 << 20) - 10),  # in the last MiB
        (folder, folder / "slice150.dcm", 19_990),  # near the end of one slice of a series
    ]:
        before = fingerprint(path)
        stat = file.stat()
        data = bytearray(file.read_bytes())
        data[offset] ^= 0xFF
        file.write_bytes(bytes(data))
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert file.stat().st_size == stat.st_size
        assert fingerprint(path) != before, (path.name, offset)


def test_the_fingerprint_never_reads_a_pipe(tmp_path):
    """A manifest may name anything: a pipe would block the fingerprint's read forever."""
    pipe = tmp_path / "scan.nii"
    os.mkfifo(pipe)
    prints: list[str] = []
    reader = threading.Thread(target=lambda: prints.append(fingerprint(pipe)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert prints and prints[0] != fingerprint(tmp_path / "missing.nii")


def test_cli_says_what_the_run_left_out_under_the_summary(tmp_path, model, capsys):
    write_cohort(tmp_path / "scans", phantoms=1, broken=False)
    args = ["cohort", "segment", str(tmp_path / "scans"), "--model", str(model), "--device", "cpu"]
    args += ["--out", str(tmp_path / "scans" / "masks")]
    assert main(args) == 0
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("0 done / 0 failed / 1 skipped of 1")
    assert printed[-1].startswith("warning: 1 path(s) in a cohort output folder were not taken")

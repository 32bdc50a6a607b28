"""Cohort runs from hostile hands: generated manifests, mutated run records, odd set-ups.

Every case ends in a MedaiError whose one-line message names the problem, or in
the right result checked with independent readers: the scans a manifest lists
(known from how the case was made), the record's rows (the json module) and
table (the csv module), and the masks on disk (nibabel, compared voxel for
voxel with the masks of the first, untouched run). A traceback, a scan skipped
on the word of an untrustworthy row, an output taken as a scan or a mask that
is not the scan's fail the case. Inputs are built once per module, seeded.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest
from cohort_scans import save_tiny_classifier, save_tiny_model, write_cohort

from napari_medai.core.cohort.manifest import CohortWarning, read_manifest
from napari_medai.core.cohort.record import RECORD_FILE, TABLE_FILE, RunRecord
from napari_medai.core.cohort.run import EngineConfig, cohort_job
from napari_medai.core.cohort.tasks import SegmentTask, TaskSpec
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import run_job

SEED = 17
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Junk tried in the run record's fields (a seeded few per field keep the file fast).
JUNK = {
    "null": None,
    "text": "banana",
    "true": True,
    "negative": -1,
    "huge": 1e300,
    "bigint": 10**40,
    "list": [1, 2, 3],
    "nested": {"a": [[{"b": None}]]},
    "longtext": "x" * 5000,
    "object": {},
    "passwd": "/etc/passwd",
    "passwd-list": ["/etc/passwd"],
    "escape-list": ["../outside_seg.nii.gz"],
    "empty-name": [""],
    "nul": "a\u0000b",
}
JUNK_PER_FIELD = 2
#: The type each field the run reads must have; junk of another type must be flagged.
FIELD_TYPES = {
    "status": str,
    "input": str,
    "fingerprint": str,
    "task": str,
    "error": str,
    "input_sha256": str,
    "output_sha256": str,
    "outputs": list,
    "seconds": dict,
}
#: Fields only shown to people (a junk value there is harmless and kept).
SHOWN_FIELDS = ("finished", "worker", "model_sha256")


@dataclass
class World:
    """What every case shares: the scans, the models, and a finished run of the scans."""

    root: Path
    scans: list[Path]
    model: Path
    classifier: Path
    base: Path
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def spec(self, task: str = "segment", model: Path | None = None) -> TaskSpec:
        return TaskSpec(task, str(model or self.model), device="cpu")


def _warnings_of(action: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``action()`` and the CohortWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    return result, [str(w.message) for w in caught if issubclass(w.category, CohortWarning)]


def _refused(action: Callable[[], Any], words: str) -> None:
    """``action`` must raise a MedaiError whose one-line message contains ``words``."""
    with pytest.raises(MedaiError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortWarning)  # said on the way to the refusal
        action()
    message = str(caught.value)
    assert words in message and "\n" not in message, message


# --- manifests: (name, content, suffix, scans listed, refusal words, warning words) ----------

A, B = "../scans/phantom0.nii.gz", "../scans/phantom1.nii.gz"
OUTSIDE = "scan(s) lie outside its folder"
_HEADER = random.Random(SEED).sample(["age", "path", "sex", "site"], 4)  # path column anywhere
_CELLS = {"age": "61", "sex": "F", "site": "B"}
_SPREAD = "\n".join(
    ",".join(row) for row in [_HEADER, *([_CELLS.get(c, scan) for c in _HEADER] for scan in (A, B))]
)
MANIFESTS: list[tuple[str, Any, str, list[int], str, str]] = [
    ("path-column-anywhere", _SPREAD, ".csv", [0, 1], "", OUTSIDE),
    ("tsv-suffix", _SPREAD.replace(",", "\t"), ".tsv", [0, 1], "", OUTSIDE),
    ("tabs-in-csv", _SPREAD.replace(",", "\t"), ".csv", [0, 1], "", OUTSIDE),
    ("bom-and-caps", f"\ufeffIMAGE ,id\n{A},1\n{B},2\n", ".csv", [0, 1], "", OUTSIDE),
    ("no-header", f"{A}\n{B}\n", ".txt", [0, 1], "", OUTSIDE),
    ("blank-lines", f"path\n\n{A}\n ,\n{B}\n\n", ".csv", [0, 1], "", OUTSIDE),
    ("quoted", f'"path","note"\n"{A}","a, b"\n', ".csv", [0], "", OUTSIDE),
    (
        "absolute",
        lambda root: f"path\n{root / 'scans' / 'phantom1.nii.gz'}\n",
        ".csv",
        [1],
        "",
        OUTSIDE,
    ),
    ("no-path-column", f"patient,age\n{A},61\n", ".csv", [], "names no scan path column", ""),
    ("semicolons", f"path;age\n{A};61\n", ".csv", [], "names no scan path column", ""),
    ("empty", "", ".csv", [], "names no scans", ""),
    ("header-only", "path,age\n", ".csv", [], "names no scans", ""),
    ("latin-1", b"path\nM\xfcller.nii.gz\n", ".csv", [], "not UTF-8 text", ""),
    ("nul-in-path", f"path\n{A}\x00x\n", ".csv", [], "NUL byte", ""),
    ("missing-cell", f"path,age\n{A},1\n,2\n", ".csv", [], "row 3: no scan path", ""),
    ("listed-twice", f"path\n{A}\n../scans/./phantom0.nii.gz\n", ".csv", [], "listed twice", ""),
    (
        "garbage",
        bytes(random.Random(SEED).getrandbits(7) | 0x80 for _ in range(300)),
        ".csv",
        [],
        "not UTF-8 text",
        "",
    ),
    ("too-long-name", "path\n" + "a" * 5000 + ".nii.gz\n", ".csv", [], "name too long", ""),
    ("beside-its-scans", "path\nphantom1.nii.gz\nphantom0.nii.gz\n", "@scans", [1, 0], "", ""),
]


def _manifest(world: World, name: str, content: Any, suffix: str) -> Path:
    """Write a manifest (in ``manifests/``, or among the scans for the suffix ``@scans``)."""
    folder = world.root / ("scans" if suffix == "@scans" else "manifests")
    path = folder / f"{name}{'.csv' if suffix == '@scans' else suffix}"
    path.parent.mkdir(exist_ok=True)
    content = content(world.root) if callable(content) else content
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _check_manifest(world: World, path: Path, listed: list[int], error: str, warning: str) -> None:
    if error:
        _refused(lambda: read_manifest(path), error)
        return
    items, said = _warnings_of(lambda: read_manifest(path))
    assert [item.path for item in items] == [str(world.scans[i].resolve()) for i in listed]
    assert bool(said) == bool(warning) and all(warning in text for text in said), said


# --- run records -----------------------------------------------------------------------------

#: (field, junk name) in scan 0's row: a seeded few per field.
_RNG = random.Random(SEED)
RECORD_FIELDS = [*FIELD_TYPES, "id", *SHOWN_FIELDS]
JUNK_CASES = [(f, j) for f in RECORD_FIELDS for j in _RNG.sample(sorted(JUNK), JUNK_PER_FIELD)]
#: Outputs pointing at files that exist outside the output folder, always tried.
JUNK_CASES += [
    ("outputs", j) for j in ("passwd-list", "escape-list") if ("outputs", j) not in JUNK_CASES
]
#: Where the torn-line case cuts the first line (a fraction of its length).
_CUT = _RNG.random()


def _append(**change: Any) -> Callable[[list[str], dict, dict], None]:
    """An edit appending scan 0's row with ``change`` (a later line wins)."""
    return lambda lines, first, second: lines.append(json.dumps({**first, **change}))


def _tear(lines: list[str], first: dict, second: dict) -> None:
    lines[0] = lines[0][: int(5 + _CUT * (len(lines[0]) - 10))]


#: Hand edits and damage to the record's lines: edit(lines, first row, second row).
LINE_EDITS: dict[str, Callable[[list[str], dict, dict], None]] = {
    "torn-first-line": _tear,
    "garbage-line": lambda lines, *_: lines.__setitem__(0, "\udcff\udcfe{\udc80"),
    "bom": lambda lines, *_: lines.__setitem__(0, "\ufeff" + lines[0]),
    "deep-nesting": lambda lines, *_: lines.append("[" * 100_000),
    "giant-number": lambda lines, *_: lines.append('{"id": "x", "seconds": ' + "9" * 5000 + "}"),
    "later-failed": _append(status="failed"),
    "other-scans-outputs": lambda lines, first, second: lines.append(
        json.dumps({**first, "outputs": second["outputs"]})
    ),
    "unknown-field": _append(colour="blue"),
    "nan-seconds": _append(seconds={"total": math.nan}),
    "emptied": lambda lines, *_: lines.clear(),
}


def _record_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORD_FILE).read_text().splitlines()]


def _write_lines(out: Path, lines: list[str]) -> None:
    data = b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for line in lines)
    (out / RECORD_FILE).write_bytes(data)


def _copy_base(world: World, name: str) -> Path:
    out = world.root / "records" / name
    shutil.copytree(world.base, out)
    return out


def _junk_record(world: World, field_name: str, junk: str) -> Path:
    out = _copy_base(world, f"{field_name}={junk}")
    rows = _record_rows(out)
    rows[0][field_name] = JUNK[junk]
    _write_lines(out, [json.dumps(row) for row in rows])
    return out


def _edited_record(world: World, name: str) -> Path:
    out = _copy_base(world, name)
    rows = _record_rows(out)
    lines = [json.dumps(row) for row in rows]
    LINE_EDITS[name](lines, *rows)
    _write_lines(out, lines)
    return out


def _linked_output(world: World) -> Path:
    out = _copy_base(world, "output-is-a-link")
    target = out / _record_rows(out)[0]["outputs"][0]
    target.unlink()
    target.symlink_to("/etc/passwd")
    return out


def _record_folder(world: World) -> Path:
    out = _copy_base(world, "record-is-a-folder")
    (out / RECORD_FILE).unlink()
    (out / RECORD_FILE).mkdir()
    return out


def _latest_rows(out: Path) -> dict[str, dict]:
    """The latest row per scan id, read with the json module as a person would."""
    latest: dict[str, dict] = {}
    for line in (out / RECORD_FILE).read_bytes().split(b"\n"):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            latest[row["id"]] = row
    return latest


def _check_rerun(world: World, out: Path, junk: tuple[str, Any] | None = None) -> None:
    """Run again on a changed record: untrustworthy rows re-run, every mask ends right."""
    items = read_manifest(world.root / "scans")
    spec = world.spec()
    summary, said = _warnings_of(lambda: run_job(cohort_job(items, spec, out)))
    rerun = {row["id"] for row in summary.rows}
    assert all(row["status"] == "done" for row in summary.rows), summary.rows
    assert summary.skipped + len(rerun) == len(items)
    latest = _latest_rows(out)
    for item in items:
        names = SegmentTask.outputs(item)
        if item.id not in rerun:  # skipped: its row must be sound and name this scan's outputs
            row = latest[item.id]
            assert row["status"] == "done" and row["outputs"] == names, row
            assert row["fingerprint"] == item.fingerprint and row["task"] == spec.key(), row
            assert all(isinstance(row[n], t) for n, t in FIELD_TYPES.items()), row
        mask = out / names[0]
        assert mask.is_file() and not mask.is_symlink()
        np.testing.assert_array_equal(np.asarray(nibabel.load(mask).dataobj), world.masks[item.id])
    if (
        junk is not None
        and junk[0] in FIELD_TYPES
        and not isinstance(junk[1], FIELD_TYPES[junk[0]])
    ):
        assert any(f"field '{junk[0]}'" in text and RECORD_FILE in text for text in said), said
    with open(out / TABLE_FILE, newline="", encoding="utf-8") as handle:
        table = {row["id"]: row["status"] for row in csv.DictReader(handle)}
    assert table == {item.id: "done" for item in items}


# --- run set-ups -----------------------------------------------------------------------------


def _refuse_run(world: World, words: str, source: Path, out: Path, spec=None, engine=None):
    items = read_manifest(source)
    _refused(lambda: run_job(cohort_job(items, spec or world.spec(), out, engine)), words)


def _outputs_inside(world: World, glob: bool) -> None:
    """A run whose output folder sits in the cohort's folder, twice: no output is re-read."""
    scans = world.root / f"inside_{'glob' if glob else 'folder'}"
    shutil.copytree(world.root / "scans", scans, ignore=shutil.ignore_patterns("*.csv"))
    source = str(scans / "**" / "*.nii.gz") if glob else scans
    out = scans / "masks"
    first, _ = _warnings_of(lambda: run_job(cohort_job(read_manifest(source), world.spec(), out)))
    again, said = _warnings_of(
        lambda: run_job(cohort_job(read_manifest(source), world.spec(), out))
    )
    assert (first.done, first.failed, first.skipped) == (2, 0, 0)
    assert (again.done, again.failed, again.skipped) == (0, 0, 2)
    assert said and "not taken as scans" in said[0], said
    assert RunRecord(out).latest.keys() == {row["id"] for row in first.rows}


SETUPS: dict[str, Callable[[World], None]] = {
    "out-is-a-file": lambda w: _refuse_run(
        w, "is a file, not a folder", w.root / "scans", w.root / "taken.txt"
    ),
    "out-under-a-file": lambda w: _refuse_run(
        w, "cannot make the output folder", w.root / "scans", w.root / "taken.txt" / "out"
    ),
    "out-is-the-scans": lambda w: _refuse_run(
        w, "every scan of the cohort lies", w.root / "scans", w.root / "scans"
    ),
    "out-inside-a-scan-folder": lambda w: _refuse_run(
        w, "lies inside the scan folder", w.root / "series.csv", w.root / "series" / "out"
    ),
    "classifier-to-segment": lambda w: _refuse_run(
        w,
        "'tiny cls' is a classification model",
        w.root / "scans",
        w.root / "cls_seg",
        w.spec("segment", w.classifier),
    ),
    "segmenter-to-classify": lambda w: _refuse_run(
        w,
        "'tiny seg' is a segmentation model",
        w.root / "scans",
        w.root / "seg_cls",
        w.spec("classify"),
    ),
    "unknown-task": lambda w: _refuse_run(
        w, "unknown cohort task 'banana'", w.root / "scans", w.root / "b", w.spec("banana")
    ),
    "unknown-engine": lambda w: _refuse_run(
        w, "unknown engine 'spark'", w.root / "scans", w.root / "s", None, EngineConfig("spark")
    ),
    "outputs-inside-a-folder-cohort": lambda w: _outputs_inside(w, glob=False),
    "outputs-inside-a-glob-cohort": lambda w: _outputs_inside(w, glob=True),
}


# --- the corpus ------------------------------------------------------------------------------


def _world(root: Path) -> World:
    """Two phantoms, both models, and a finished run whose masks every case is checked against."""
    scans = write_cohort(root / "scans", phantoms=2, broken=False)
    world = World(
        root,
        scans,
        save_tiny_model(root / "tiny"),
        save_tiny_classifier(root / "cls"),
        root / "base",
    )
    items = read_manifest(root / "scans")
    summary = run_job(cohort_job(items, world.spec(), world.base))
    assert summary.done == len(items) == 2
    for item in items:
        mask = world.base / SegmentTask.outputs(item)[0]
        world.masks[item.id] = np.asarray(nibabel.load(mask).dataobj)
    (root / "taken.txt").write_text("a file, not a folder")
    (root / "series").mkdir()  # a folder scan, listed by a manifest beside it
    (root / "series" / "slice.dcm").write_bytes(b"never read: the run is refused first")
    (root / "series.csv").write_text("path\nseries\n")
    return world


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, one_torch_thread) -> dict[str, Callable[[], None]]:
    """Every case's input, built once (seeded); name -> its check."""
    world = _world(tmp_path_factory.mktemp("cohort_fuzz"))
    checks: dict[str, Callable[[], None]] = {}
    for name, content, suffix, listed, error, warning in MANIFESTS:
        path = _manifest(world, name, content, suffix)
        checks[f"manifest-{name}"] = partial(_check_manifest, world, path, listed, error, warning)
    (world.root / "records").mkdir()
    (world.root / "records" / "outside_seg.nii.gz").write_bytes(b"not ours")  # '../' junk
    for field_name, junk in JUNK_CASES:
        out = _junk_record(world, field_name, junk)
        checks[f"record-{field_name}={junk}"] = partial(
            _check_rerun, world, out, (field_name, JUNK[junk])
        )
    for name in LINE_EDITS:
        checks[f"record-{name}"] = partial(_check_rerun, world, _edited_record(world, name))
    checks["record-output-is-a-link"] = partial(_check_rerun, world, _linked_output(world))
    folder = _record_folder(world)
    checks["record-is-a-folder"] = partial(
        _refuse_run, world, "the run record cannot be read", world.root / "scans", folder
    )
    for name, setup in SETUPS.items():
        checks[f"setup-{name}"] = partial(setup, world)
    return checks


CASE_NAMES = [
    *(f"manifest-{case[0]}" for case in MANIFESTS),
    *(f"record-{f}={j}" for f, j in JUNK_CASES),
    *(f"record-{name}" for name in LINE_EDITS),
    "record-output-is-a-link",
    "record-is-a-folder",
    *(f"setup-{name}" for name in SETUPS),
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cohort_case_ends_in_a_clear_refusal_or_the_right_result(corpus, name):
    corpus[name]()

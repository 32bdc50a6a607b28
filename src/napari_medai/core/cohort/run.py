"""A cohort run as a generator job: many scans, one task, a local or a Ray engine.

The run record in the output folder decides what runs (new, failed and
changed scans; see :mod:`record`); each finished scan is appended to it at once,
so a killed driver loses nothing and a re-run picks up where it stopped.
Progress events carry a :class:`CohortProgress` payload (counts, throughput,
ETA, the latest row). ``local`` runs every scan in this process and needs no
Ray; ``ray`` hands them to a pool of Ray actors that keep the model loaded.

A scan whose modality differs from the one the model was made for (a CT
model on an MR scan) is run all the same, and the run warns about it, once
per scan (a :class:`CohortWarning` naming the scan's id; the row keeps it).

Outputs are never inputs: the output folder, the files directly in it (all a
run writes) and any folder holding a run record, with its files, are dropped
from the cohort with a warning, so a folder or glob cohort whose output folder
sits inside it never segments its own outputs.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medai.core.cohort.manifest import CohortWarning, ScanItem, read_manifest
from napari_medai.core.cohort.ray_engine import ray_rows, require_ray
from napari_medai.core.cohort.record import RECORD_FILE, RunRecord
from napari_medai.core.cohort.tasks import CohortWorker, TaskSpec, task_class
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job, Progress

ENGINES = ("local", "ray")
#: The longest wait between progress events while Ray workers are busy.
HEARTBEAT_S = 0.5


@dataclass
class EngineConfig:
    """Where the scans run: ``local`` in this process, or ``ray`` (cluster at ``address``)."""

    engine: str = "local"
    workers: int = 1
    address: str | None = None
    gpus_per_worker: float = 0.0


@dataclass
class CohortProgress:
    """Counts so far in this run, throughput (scans/s) and the estimated seconds left."""

    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    rate: float = 0.0
    eta_s: float | None = None
    row: dict[str, Any] | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def describe(self) -> str:
        """One line: ``3/10 scans (3 done, 0 failed, 2 skipped), 0.52 scans/s, ETA 13 s``."""
        eta = "" if self.eta_s is None else f", ETA {self.eta_s:.0f} s"
        return (
            f"{self.finished}/{self.total} scans ({self.done} done, {self.failed} failed, "
            f"{self.skipped} skipped), {self.rate:.2f} scans/s{eta}"
        )


@dataclass
class CohortSummary:
    """What a run did: rows of the scans it ran, how many it skipped, where the record is."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    record: Path | None = None
    table: Path | None = None

    @property
    def done(self) -> int:
        return sum(row["status"] == "done" for row in self.rows)

    @property
    def failed(self) -> int:
        return sum(row["status"] == "failed" for row in self.rows)


def cohort_job(
    items: list[ScanItem], spec: TaskSpec, out: Path, engine: EngineConfig | None = None
) -> Job[CohortSummary]:
    """Run ``spec`` on every scan of ``items`` not yet done; outputs and record in ``out``."""
    engine = engine or EngineConfig()
    if engine.engine not in ENGINES:
        raise MedaiError(f"unknown engine '{engine.engine}'; choose {' or '.join(ENGINES)}")
    if engine.workers < 1:
        raise MedaiError(f"at least one worker is needed, not {engine.workers}")
    if engine.gpus_per_worker < 0:
        raise MedaiError(f"GPUs per worker must be 0 or more, not {engine.gpus_per_worker}")
    task_class(spec.task)
    if engine.engine == "ray":
        require_ray()
    items = scans_only(items, Path(out))
    out = _output_folder(Path(out))
    return _run(items, spec, out, engine, RunRecord(out))


def cohort_from_manifest_job(
    source: str | Path, spec: TaskSpec, out: Path, engine: EngineConfig | None = None
) -> Job[CohortSummary]:
    """:func:`cohort_job` on the scans ``source`` lists (a folder, CSV manifest or glob).

    The Cohort dock's job, run in the worker process: listing the scans, loading
    the model and segmenting all happen there, never in napari's.
    """
    return (yield from cohort_job(read_manifest(source), spec, out, engine))


def _output_folder(out: Path) -> Path:
    """``out`` made if needed; one clear line when it is a file or cannot be made."""
    try:
        if out.exists() and not out.is_dir():
            raise MedaiError(
                f"{out} is a file, not a folder; choose a folder for the cohort outputs"
            )
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedaiError(f"{out}: cannot make the output folder ({error.strerror})") from error
    return out.resolve()


def scans_only(items: list[ScanItem], out: Path) -> list[ScanItem]:
    """``items`` without any output: ``out`` and the files in it, and other runs' output folders.

    A run writes only directly into ``out``, so scans in its sub-folders stay
    scans (``--out .`` with the scans in ``./scans``). A warning says what was dropped.
    """
    out = out.resolve()
    kept, dropped = [], []
    for item in items:
        path = Path(item.path)
        if path != out and out.is_relative_to(path):
            raise MedaiError(
                f"the output folder {out} lies inside the scan folder {path}, so its outputs "
                "would be read as part of that scan; choose an output folder outside it"
            )
        (dropped if _is_output(path, out) else kept).append(item)
    if dropped and not kept:
        raise MedaiError(
            f"every scan of the cohort lies in an output folder ({dropped[0].path}); outputs are "
            "never read as scans: keep the scans and the output folder apart"
        )
    if dropped:
        warnings.warn(
            f"{len(dropped)} path(s) in a cohort output folder were not taken as scans "
            f"(outputs are never inputs): {', '.join(Path(i.path).name for i in dropped[:3])}"
            + (", ..." if len(dropped) > 3 else ""),
            CohortWarning,
            stacklevel=3,
        )
    return kept


def _is_output(path: Path, out: Path) -> bool:
    """Whether ``path`` is ``out``, a file in it, or (in) a folder holding a run record."""
    return (
        path == out
        or path.parent == out
        or os.path.isfile(path / RECORD_FILE)
        or os.path.isfile(path.parent / RECORD_FILE)
    )


def _run(
    items: list[ScanItem], spec: TaskSpec, out: Path, engine: EngineConfig, record: RunRecord
) -> Job[CohortSummary]:
    key = spec.key()
    outputs = task_class(spec.task).outputs
    why = {item.id: record.why_run(item, key, outputs(item)) for item in items}
    todo = [item for item in items if why[item.id] is not None]
    _say_damaged(record, [item for item in items if why[item.id] == "damaged"])
    _remove_torn_temporaries(out, todo)
    progress = CohortProgress(total=len(todo), skipped=len(items) - len(todo))
    summary = CohortSummary(skipped=progress.skipped, record=record.path)
    started = time.perf_counter()
    rows = (
        _local_rows(todo, spec, out)
        if engine.engine == "local"
        else _ray_rows(todo, spec, out, engine)
    )
    try:
        yield Progress(0.0, f"{len(todo)} to run, {progress.skipped} already done", progress)
        for event in rows:
            if isinstance(event, Progress):  # within a scan (local engine)
                fraction = (progress.finished + event.fraction) / max(len(todo), 1)
                yield Progress(fraction, f"{progress.describe()}: {event.message}", progress)
                continue
            if event is None:  # heartbeat while workers are busy
                yield Progress(progress.finished / max(len(todo), 1), progress.describe(), progress)
                continue
            record.append(event)
            summary.rows.append(event)
            _say_modality(event)
            progress.done += event["status"] == "done"
            progress.failed += event["status"] == "failed"
            elapsed = time.perf_counter() - started
            progress.rate = progress.finished / elapsed if elapsed > 0 else 0.0
            left = len(todo) - progress.finished
            progress.eta_s = left / progress.rate if progress.rate > 0 else None
            progress.row = event
            yield Progress(progress.finished / max(len(todo), 1), progress.describe(), progress)
    finally:
        rows.close()
        _remove_torn_temporaries(out, todo)
        summary.seconds = time.perf_counter() - started
        summary.table = record.write_table(item.id for item in items)
    return summary


def _say_damaged(record: RunRecord, items: list[ScanItem]) -> None:
    """Warn that scans whose record rows cannot be trusted run again, naming the first row."""
    if items:
        warnings.warn(
            f"{len(items)} row(s) of the run record cannot be trusted and their scans run again; "
            f"{record.damaged[items[0].id]}",
            CohortWarning,
            stacklevel=3,
        )


def _say_modality(row: dict[str, Any]) -> None:
    """Warn, naming the scan by its id, when its row says the model suits another modality."""
    if row.get("warning"):
        warnings.warn(f"scan {row['id']}: {row['warning']}", CohortWarning, stacklevel=2)


def _remove_torn_temporaries(out: Path, todo: list[ScanItem]) -> None:
    """Delete temporary files a killed worker left half-written (never a finished output).

    Runs before the scans start and after every worker has stopped, so no
    temporary file being written is touched.
    """
    for item in todo:
        for leftover in out.glob(f".{item.id}_*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _local_rows(
    todo: list[ScanItem], spec: TaskSpec, out: Path
) -> Iterator[Progress | dict[str, Any]]:
    """Rows (and progress within each scan) from one worker in this process."""
    if not todo:
        return
    yield Progress(0.0, f"loading {spec.model}")
    worker = CohortWorker(spec)
    for item in todo:
        job = worker.process_job(item, out)
        try:
            while True:
                try:
                    yield next(job)
                except StopIteration as finished:
                    yield finished.value
                    break
        finally:
            job.close()


def _ray_rows(
    todo: list[ScanItem], spec: TaskSpec, out: Path, engine: EngineConfig
) -> Iterator[dict[str, Any] | None]:
    if not todo:
        return
    yield from ray_rows(todo, spec, out, engine, HEARTBEAT_S)

"""The worker-job catalogue: entries resolve, it is the only way in, the worker yields the CPU."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import numpy as np
import pytest

from napari_medai.core import catalogue, job_process
from napari_medai.core.jobs import run_job

SRC = Path(catalogue.__file__).resolve().parents[1]


@pytest.mark.parametrize("entry", catalogue.WORKER_JOBS, ids=lambda entry: entry.target)
def test_every_worker_job_resolves_to_a_job_function(entry):
    function = entry.resolve()
    returns = str(inspect.signature(function).return_annotation)
    assert inspect.isgeneratorfunction(function) or returns.startswith("Job["), returns


def test_entries_are_all_listed():
    named = {v for v in vars(catalogue).values() if isinstance(v, catalogue.WorkerJob)}
    assert named == set(catalogue.WORKER_JOBS)


def test_nothing_outside_the_catalogue_starts_a_worker_job_by_name():
    """A job named by string elsewhere is a hop that neither import-linter nor a reader sees."""
    allowed = {SRC / "core" / "catalogue.py", SRC / "core" / "job_process.py"}
    job_string = re.compile(r"""["']napari_medai\.[\w.]+:\w+["']""")
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path not in allowed and ("run_in_process" in text or job_string.search(text)):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")
def test_the_worker_runs_below_napari_priority(monkeypatch):
    monkeypatch.setattr(job_process, "_idle", [])
    result = run_job(catalogue.WorkerJob("jobs_for_processes:count")(1, np.ones(1)))
    assert result["pid"] != os.getpid()
    worker_nice = os.getpriority(os.PRIO_PROCESS, result["pid"])
    assert worker_nice >= os.getpriority(os.PRIO_PROCESS, 0) + 1

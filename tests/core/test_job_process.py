"""Jobs run in a worker process: events, results, errors, cancel, and a dead worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_medai.core import job_process
from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.job_process import JobProcessError, RemoteTraceback, run_in_process
from napari_medai.core.jobs import run_job

JOBS = "jobs_for_processes"


def until_working(job) -> int:
    """Advance a ``forever`` job past the worker's start; return the worker's pid."""
    for event in job:
        if event.message == "working":
            return event.payload
    raise AssertionError("the job ended")


def test_events_and_result_come_back_and_the_worker_is_reused(monkeypatch):
    monkeypatch.setenv("MEDAI_TEST_VALUE", "seen by the child")
    monkeypatch.setattr(job_process, "_idle", [])  # no warm worker: this run starts one
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    events = []
    result = run_job(run_in_process(f"{JOBS}:count", 3, array), events.append)
    assert events[0].fraction is None and events[0].message.startswith("starting a worker")
    steps = [e for e in events if e.message.startswith("step")]
    assert [e.message for e in steps] == ["step 0", "step 1", "step 2"]
    assert [e.payload["i"] for e in steps] == [0, 1, 2]
    np.testing.assert_array_equal(result["array"], array * 2)
    np.testing.assert_array_equal(array, np.arange(12).reshape(3, 4))  # ours is untouched
    assert result["pid"] != os.getpid()
    assert result["env"] == "seen by the child"
    events.clear()
    again = run_job(run_in_process(f"{JOBS}:count", 1, array), events.append)
    assert again["pid"] == result["pid"]
    assert [e.message for e in events] == ["step 0"]  # the warm worker starts nothing


def test_an_error_arrives_as_itself_with_the_child_traceback():
    with pytest.raises(GeometryError, match="differ by 2 mm") as info:
        run_job(run_in_process(f"{JOBS}:fail_after_one"))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_after_one" in str(info.value.__cause__)


def test_an_error_that_cannot_travel_is_told_by_name():
    with pytest.raises(MedaiError, match="_Odd: odd 1 2"):
        run_job(run_in_process(f"{JOBS}:fail_unpicklable"))


def test_closing_runs_the_child_cleanup_before_returning(tmp_path):
    marker = tmp_path / "marker"
    job = run_in_process(f"{JOBS}:forever", marker)
    until_working(job)
    started = time.monotonic()
    job.close()
    assert time.monotonic() - started < 1.0
    assert marker.read_text() == "cleaned up"
    result = run_job(run_in_process(f"{JOBS}:count", 1, np.zeros(2)))
    assert result["array"].tolist() == [0, 0]  # the same worker is usable after a cancel


def test_a_killed_worker_is_an_error_and_the_next_job_gets_a_new_one(tmp_path):
    job = run_in_process(f"{JOBS}:forever", tmp_path / "marker")
    pid = until_working(job)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(JobProcessError, match="SIGKILL.*out of memory"):
        for _ in job:
            pass
    result = run_job(run_in_process(f"{JOBS}:count", 1, np.zeros(2)))
    assert result["pid"] != pid


def test_a_worker_that_ignores_cancel_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(job_process, "CLEANUP_TIMEOUT_S", 0.5)
    job = run_in_process(f"{JOBS}:forever", tmp_path / "marker")
    pid = until_working(job)
    os.kill(pid, signal.SIGSTOP)  # a child stuck in a long step
    started = time.monotonic()
    job.close()
    assert time.monotonic() - started < 3.0
    with pytest.raises(ProcessLookupError):
        for _ in range(20):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """multiprocessing's spawn would rerun such a script (a second napari window)."""
    script = tmp_path / "user_script.py"
    script.write_text(
        "import numpy as np\n"
        "from napari_medai.core.job_process import run_in_process\n"
        "from napari_medai.core.jobs import run_job\n"
        "print('script ran')\n"
        f"print(run_job(run_in_process('{JOBS}:count', 2, np.ones(3)))['array'].sum())\n"
    )
    path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": path},
        check=True,
    )
    assert done.stdout.split() == ["script", "ran", "6.0"]


def test_without_separate_processes_the_job_runs_here(monkeypatch):
    """Windows has no pass_fds: the same job then runs in the caller's thread."""
    monkeypatch.setattr(job_process, "SEPARATE_PROCESS", False)
    events = []
    result = run_job(run_in_process(f"{JOBS}:count", 2, np.ones(2)), events.append)
    assert result["pid"] == os.getpid()
    assert [e.message for e in events] == ["step 0", "step 1"]


def test_warnings_are_warned_here_with_their_category():
    for _ in range(2):  # a second job warns again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run_job(run_in_process(f"{JOBS}:warn_once")) == "done"
        told = [(w.category, str(w.message)) for w in caught]
        assert told == [(UserWarning, "this model was made for MRI scans")]

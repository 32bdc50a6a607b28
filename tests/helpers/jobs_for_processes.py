"""Small generator jobs that tests/core/test_job_process.py runs in a worker process.

They live in their own module because the worker imports a job by its module
name; pytest puts this folder on ``sys.path``, which the worker inherits.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from napari_medai.core.errors import GeometryError
from napari_medai.core.jobs import Job, Progress


def count(n: int, array: np.ndarray) -> Job[dict]:
    """Yield ``n`` events, then return the array doubled and this process's id."""
    for i in range(n):
        yield Progress(i / n, f"step {i}", {"i": i})
    array *= 2  # the child's copy must be writable
    return {"array": array, "pid": os.getpid(), "env": os.environ.get("MEDAI_TEST_VALUE")}


def forever(marker: Path) -> Job[None]:
    """Yield every 50 ms until closed; the cleanup writes ``marker``."""
    try:
        while True:
            time.sleep(0.05)
            yield Progress(None, "working", os.getpid())
    finally:
        marker.write_text("cleaned up")


def fail_after_one() -> Job[None]:
    """Yield once, then raise a MedaiError subclass."""
    yield Progress(0.0, "starting")
    raise GeometryError("the grids differ by 2 mm")


class _Odd(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"odd {a} {b}")


def fail_unpicklable() -> Job[None]:
    """Raise an exception that cannot be rebuilt from its pickle."""
    yield Progress(0.0, "starting")
    raise _Odd(1, 2)


def warn_once() -> Job[str]:
    """Warn the user, then return."""
    yield Progress(0.0, "starting")
    warnings.warn("this model was made for MRI scans", UserWarning, stacklevel=1)
    return "done"

"""Long work as generator jobs.

A job is a generator that yields :class:`Progress` events and returns its
result. Cancelling means the consumer stops iterating (``close()``), which
raises ``GeneratorExit`` inside the job so its ``finally`` blocks clean up.
The GUI drives jobs through napari's thread worker, the CLI with a text bar,
tests with :func:`run_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress event: fraction done (0..1), a message, optional payload.

    A fraction of ``None`` means "working, amount unknown" (a long single step
    such as loading a model): progress bars show busy instead of a fraction.
    ``payload`` carries things such as the current loss or a preview array.
    """

    fraction: float | None
    message: str = ""
    payload: Any = None


Job = Generator[Progress, None, T]


def run_job(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Drive ``job`` to the end in a plain loop and return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def scaled(job: Job[T], start: float, stop: float) -> Job[T]:
    """Run ``job`` as a sub-step, mapping its fractions into [start, stop]."""
    span = stop - start
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                return done.value
            fraction = None if event.fraction is None else start + span * event.fraction
            yield Progress(fraction, event.message, event.payload)
    finally:
        job.close()

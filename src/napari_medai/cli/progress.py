"""Drive a core job with a one-line text progress bar on stderr."""

from __future__ import annotations

import sys
from typing import TextIO, TypeVar

from napari_medai.core.jobs import Job, Progress, run_job

T = TypeVar("T")


def run_with_bar(job: Job[T], label: str, stream: TextIO | None = None) -> T:
    """Run ``job`` to the end, redrawing ``[#####.....] 50% message`` on stderr."""
    out = stream or sys.stderr

    def draw(event: Progress) -> None:
        filled = int(round(30 * min(max(event.fraction, 0.0), 1.0)))
        bar = "#" * filled + "." * (30 - filled)
        out.write(f"\r{label} [{bar}] {event.fraction:4.0%} {event.message[:50]:<50}")
        out.flush()

    try:
        return run_job(job, draw)
    finally:
        out.write("\n")
        out.flush()

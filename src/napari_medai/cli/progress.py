"""Drive a core job with a one-line text progress bar on stderr."""

from __future__ import annotations

import sys
from typing import TextIO, TypeVar

from napari_medai.core.jobs import Job, Progress, run_job

T = TypeVar("T")


def run_with_bar(job: Job[T], label: str, stream: TextIO | None = None) -> T:
    """Run ``job`` to the end, redrawing ``[#####.....] 50% message`` on stderr.

    An event without a fraction keeps the bar where it was and shows ``...``.
    """
    out = stream or sys.stderr
    shown = [0.0]

    def draw(event: Progress) -> None:
        if event.fraction is not None:
            shown[0] = min(max(event.fraction, 0.0), 1.0)
        filled = int(round(30 * shown[0]))
        bar = "#" * filled + "." * (30 - filled)
        amount = " ..." if event.fraction is None else f"{shown[0]:4.0%}"
        out.write(f"\r{label} [{bar}] {amount} {event.message[:50]:<50}")
        out.flush()

    try:
        return run_job(job, draw)
    finally:
        out.write("\n")
        out.flush()

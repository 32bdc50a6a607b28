"""Measure how responsive the Qt event loop is, with a timer heartbeat.

A precise ``QTimer`` ticks every ``interval_ms``; whenever the event loop is
busy, the next tick comes late. The lateness of each tick is a stall. Issue 4
asks for the worst stall while training to stay under 100 ms; tests and
``bench/`` read it from here.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer


class Stall(NamedTuple):
    """One late tick: when it came (seconds after start) and how late (ms)."""

    at_s: float
    ms: float


class EventLoopMonitor(QObject):
    """Record event-loop stalls between :meth:`start` and :meth:`stop`.

    Only meaningful while the event loop runs (``napari.run()``,
    ``qtbot.waitUntil``, ``QApplication.processEvents`` in a loop): time spent
    outside it counts as a stall, which is the point. Also a context manager.
    """

    def __init__(
        self, interval_ms: int = 10, threshold_ms: float = 50.0, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.threshold_ms = threshold_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self._started = 0.0
        self._stopped: float | None = None
        self._worst = 0.0
        self._stalls: list[Stall] = []
        self._ticks = 0

    def start(self) -> None:
        """Reset the statistics and start the heartbeat."""
        self._worst = 0.0
        self._stalls = []
        self._ticks = 0
        self._started = self._last = time.perf_counter()
        self._stopped = None
        self._timer.start()

    def stop(self) -> None:
        """Stop the heartbeat; a stall still going on at this moment counts too."""
        if self._timer.isActive():
            now = time.perf_counter()
            self._record(now)
            self._stopped = now
        self._timer.stop()

    def _tick(self) -> None:
        self._ticks += 1
        self._record(time.perf_counter())

    def _record(self, now: float) -> None:
        if self._last is None:
            return
        stall = max(0.0, (now - self._last) * 1000.0 - self.interval_ms)
        self._last = now
        self._worst = max(self._worst, stall)
        if stall > self.threshold_ms:
            self._stalls.append(Stall(now - self._started, stall))

    @property
    def running(self) -> bool:
        """Whether the heartbeat is ticking."""
        return self._timer.isActive()

    @property
    def worst_stall_ms(self) -> float:
        """The longest delay of a tick beyond the interval, in milliseconds."""
        return self._worst

    @property
    def stalls(self) -> list[Stall]:
        """Every stall longer than ``threshold_ms``, in order."""
        return list(self._stalls)

    @property
    def ticks(self) -> int:
        """Number of heartbeats received."""
        return self._ticks

    @property
    def duration_s(self) -> float:
        """Seconds from :meth:`start` to :meth:`stop` (or to now, while running)."""
        end = self._stopped if self._stopped is not None else time.perf_counter()
        return end - self._started

    def summary(self) -> dict[str, float | int]:
        """The measurements as a JSON-ready dict (for ``bench/``)."""
        return {
            "interval_ms": self.interval_ms,
            "threshold_ms": self.threshold_ms,
            "duration_s": round(self.duration_s, 3),
            "ticks": self.ticks,
            "worst_stall_ms": round(self.worst_stall_ms, 1),
            "p99_stall_ms": self.p99_stall_ms(),
            "stalls_over_threshold": len(self._stalls),
        }

    def p99_stall_ms(self) -> float | None:
        """The 99th percentile of every tick's lateness (ticks on time count as 0 ms)."""
        late = [stall.ms for stall in self._stalls]
        late += [0.0] * max(0, self.ticks - len(late))
        return round(float(np.percentile(late, 99)), 1) if late else None

    def __enter__(self) -> EventLoopMonitor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""The one training loop: budgets, threads, validation, checkpoints, progress and stop.

The segmentation, classification and GAN trainers are :class:`Steps` (a step
plus the hooks they need) that :func:`run_training` drives as a generator job
(``core.jobs``) on the training threads. Training time runs on a :class:`Clock`
stopped while the consumer holds an event; every step yields a :class:`Progress`
with its history entry. Stopping the job (``close()``) or an error still runs
:meth:`Steps.finish`, so nothing learnt is lost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.training.config import training_threads


def library_versions() -> dict[str, str]:
    """torch's and MONAI's versions for a model card, as plain text.

    Plain ``str``: torch's version is a ``TorchVersion``, whose pickle imports
    torch wherever the card is unpickled (napari's process, for a worker's result).
    """
    import monai

    return {"torch": str(torch.__version__), "monai": str(monai.__version__)}


T = TypeVar("T")


@dataclass(frozen=True)
class Schedule:
    """When a run ends, validates and checkpoints, and on how many threads.

    Budgets count this session: ``max_iters`` steps, ``max_time_s`` seconds
    on ``now`` (CPU time suits benchmarks on a shared machine); ``None`` turns
    a budget, validation or checkpoints off. ``validation_share`` caps the part
    of training time validation may take, by validating less often when it is
    slow. The steps fill ``share`` of the job's progress bar, the trainer's
    :meth:`Steps.conclude` the rest. ``threads`` of ``None``: the free cores.
    """

    max_iters: int | None = None
    max_time_s: float | None = None
    validation_every_s: float | None = None
    checkpoint_every_s: float | None = None
    threads: int | None = None
    now: Callable[[], float] = time.perf_counter
    validation_share: float = 1.0
    share: float = 1.0

    def fraction(self, steps: int, seconds: float) -> float:
        """The part of the budget spent after ``steps`` steps and ``seconds`` s (0..1)."""
        parts = [0.0]
        if self.max_iters:
            parts.append(steps / self.max_iters)
        if self.max_time_s:
            parts.append(seconds / self.max_time_s)
        return min(max(parts), 1.0)


class Clock:
    """Training seconds: stopped while the consumer holds an event; earlier sessions carried."""

    def __init__(self, now: Callable[[], float], carried_s: float = 0.0) -> None:
        self.now = now
        self.carried_s = carried_s
        self.total = carried_s
        self.mark: float | None = now()

    def pause(self) -> None:
        if self.mark is not None:
            self.total += self.now() - self.mark
            self.mark = None

    def resume(self) -> None:
        self.mark = self.now()

    def elapsed(self) -> float:
        """Training seconds of every session so far."""
        return self.total + (self.now() - self.mark if self.mark is not None else 0.0)


class Steps:
    """A trainer as the loop drives it: :meth:`step` and :meth:`message`, other hooks if needed.

    ``iteration`` counts optimizer steps and ``elapsed_s`` training seconds
    across resumed sessions (the loop keeps it current before each hook);
    ``history`` gets one entry per step.
    """

    iteration: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]]
    #: Only the main process validates and checkpoints (DDP rank 0).
    is_main: bool = True
    #: Said once preparation is done, if anything.
    opening: str | None = None
    saving: str = "saving the model"

    def step(self, fraction: float) -> dict[str, Any]:
        """One optimizer step, ``fraction`` of the budget spent before it; its losses."""
        raise NotImplementedError

    def message(self, entry: dict[str, Any]) -> str:
        """The progress message for a step's history entry."""
        raise NotImplementedError

    def agree(self, go_on: bool) -> bool:
        """Whether to take another step, agreed between processes (DDP)."""
        return go_on

    def validate(self, fraction: float) -> Job[dict[str, Any]]:
        """Score the current weights, keeping them if best; figures for the history entry."""
        raise NotImplementedError

    def payload(self, entry: dict[str, Any]) -> Any:
        """What a step's progress event carries: a copy of its history entry."""
        return dict(entry)

    def save_last(self) -> Any:
        """Write the periodic checkpoint."""

    def conclude(self) -> Job[None]:
        """Work after the last step, outside the training time (e.g. quality measures)."""
        yield from ()

    def finish(self, finished: bool) -> None:
        """Save what must be kept: on completion, on stop and on error."""


S = TypeVar("S", bound=Steps)


def run_training(prepare: Callable[[], S], schedule: Schedule, preparing: str) -> Job[S]:
    """Prepare a trainer (saying ``preparing``), train it on ``schedule``, return it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(schedule.threads or training_threads())
    trainer: S | None = None
    clock: Clock | None = None
    finished = False
    try:
        yield Progress(0.0, preparing)
        trainer = prepare()
        if trainer.opening:
            yield Progress(0.0, trainer.opening)
        clock = Clock(schedule.now, trainer.elapsed_s)
        yield from _steps(trainer, schedule, clock)
        clock.pause()
        yield from scaled(trainer.conclude(), schedule.share, 1.0)
        yield Progress(1.0, trainer.saving)
        finished = True
    finally:
        if trainer is not None:
            if clock is not None:
                trainer.elapsed_s = clock.elapsed()
            trainer.finish(finished)
        torch.set_num_threads(threads)
    return trainer


def _steps(trainer: Steps, schedule: Schedule, clock: Clock) -> Job[None]:
    """Step until the budget is spent, validating and checkpointing on time."""
    first, validated_at = trainer.iteration, -1
    next_validation = _after(clock, schedule.validation_every_s)
    next_checkpoint = _after(clock, schedule.checkpoint_every_s)

    def spent() -> float:
        return schedule.fraction(trainer.iteration - first, clock.elapsed() - clock.carried_s)

    while trainer.agree((fraction := spent()) < 1.0):
        losses = trainer.step(fraction)
        trainer.elapsed_s = clock.elapsed()
        entry = {"iteration": trainer.iteration, "elapsed_s": round(trainer.elapsed_s, 3), **losses}
        fraction = schedule.share * spent()
        if trainer.is_main and clock.elapsed() >= next_validation:
            started = clock.elapsed()
            entry.update((yield from _held(clock, trainer.validate(fraction))))
            validated_at = trainer.iteration
            # Training for (1/share - 1) times what validation took keeps it to its share.
            rest = (clock.elapsed() - started) * (1 / schedule.validation_share - 1)
            next_validation = clock.elapsed() + max(schedule.validation_every_s, rest)
        trainer.history.append(entry)
        if trainer.is_main and clock.elapsed() >= next_checkpoint:
            trainer.elapsed_s = clock.elapsed()
            trainer.save_last()
            next_checkpoint = _after(clock, schedule.checkpoint_every_s)
        clock.pause()
        yield Progress(fraction, trainer.message(entry), trainer.payload(entry))
        clock.resume()
    if (
        trainer.is_main
        and schedule.validation_every_s is not None
        and trainer.history
        and validated_at != trainer.iteration
    ):
        final = yield from _held(clock, trainer.validate(schedule.share))
        trainer.history[-1].update(final)


def _after(clock: Clock, seconds: float | None) -> float:
    """The training time ``seconds`` from now (never, for ``None``)."""
    return math.inf if seconds is None else clock.elapsed() + seconds


def _held(clock: Clock, job: Job[T]) -> Job[T]:
    """Pass on ``job``'s events and result, the clock stopped while the consumer holds each."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                return done.value
            clock.pause()
            yield event
            clock.resume()
    finally:
        job.close()

"""The one training loop with a toy trainer on a fake clock: budgets, cadences, stop, threads."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from napari_medai.core.jobs import Job, Progress, run_job
from napari_medai.core.training.loop import Schedule, Steps, run_training


class FakeTime:
    """A clock that moves only when told to: the toy's steps and validations move it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Toy(Steps):
    """Each step takes ``step_s`` fake seconds, each validation ``validate_s``."""

    def __init__(self, clock: FakeTime, validate_s: float = 0.0, fail_at: int | None = None):
        self.clock, self.validate_s, self.fail_at = clock, validate_s, fail_at
        self.history: list[dict[str, Any]] = []
        self.spent_before: list[float] = []
        self.threads: list[int] = []
        self.calls: list[tuple] = []

    def step(self, fraction: float) -> dict[str, Any]:
        self.spent_before.append(fraction)
        self.threads.append(torch.get_num_threads())
        assert self.iteration < 50, "the loop did not stop"
        if self.iteration + 1 == self.fail_at:
            raise RuntimeError("the step failed")
        self.clock.now += 1.0
        self.iteration += 1
        return {"loss": 1.0 / self.iteration}

    def message(self, entry: dict[str, Any]) -> str:
        return f"step {entry['iteration']}"

    def validate(self, fraction: float) -> Job[dict[str, Any]]:
        try:
            yield Progress(fraction, "validating")
        except GeneratorExit:
            self.calls.append(("validation stopped", self.iteration))
            raise
        self.clock.now += self.validate_s
        self.calls.append(("validated", self.iteration))
        return {"score": self.iteration}

    def save_last(self) -> None:
        self.calls.append(("checkpoint", self.iteration, self.elapsed_s))

    def finish(self, finished: bool) -> None:
        self.calls.append(("finish", finished, self.iteration, self.elapsed_s))


def _job(trainer: Steps, **schedule: Any) -> Job[Steps]:
    return run_training(lambda: trainer, Schedule(**schedule), "preparing")


def _rising_to_one(events: list[Progress]) -> bool:
    fractions = [e.fraction for e in events]
    return fractions == sorted(fractions) and fractions[-1] == 1.0


def test_an_iteration_budget_runs_that_many_steps():
    toy = Toy(FakeTime())
    events: list[Progress] = []
    assert run_job(_job(toy, max_iters=4, now=toy.clock), events.append) is toy
    assert [h["iteration"] for h in toy.history] == [1, 2, 3, 4]
    # Each step is told how much of the budget was spent before it (the classifier anneals on it).
    assert toy.spent_before == [0.0, 0.25, 0.5, 0.75]
    assert [e.payload for e in events if e.payload] == toy.history
    assert [e.message for e in events] == [
        "preparing",
        *(f"step {i}" for i in range(1, 5)),
        "saving the model",
    ]
    assert _rising_to_one(events)
    assert toy.calls == [("finish", True, 4, 4.0)]


def test_a_time_budget_counts_training_seconds_of_this_session_only():
    toy = Toy(FakeTime())
    toy.iteration, toy.elapsed_s = 7, 10.0  # resumed: 7 steps and 10 s before
    job = _job(toy, max_time_s=3.5, now=toy.clock)
    for _ in job:
        toy.clock.now += 100.0  # the consumer holds every event a long time: not training
    # 3 s < 3.5 s after three steps, 4 s after four: the budget is spent.
    assert [(h["iteration"], h["elapsed_s"]) for h in toy.history] == [
        (8, 11),
        (9, 12),
        (10, 13),
        (11, 14),
    ]
    assert toy.calls == [("finish", True, 11, 14.0)]


@pytest.mark.parametrize(
    ("share", "validated"),
    [
        # Every 2 s of training after the last validation; validations take 1 s.
        (1.0, [2, 4, 6, 7]),
        # At most a fifth of the time: 1 s of validation waits 4 s of training.
        (0.2, [2, 6, 7]),
    ],
)
def test_validation_and_checkpoints_come_on_time(share, validated):
    toy = Toy(FakeTime(), validate_s=1.0)
    schedule = dict(validation_every_s=2.0, checkpoint_every_s=3.0, validation_share=share)
    events: list[Progress] = []
    run_job(_job(toy, max_iters=7, now=toy.clock, **schedule), events.append)
    assert [c[1] for c in toy.calls if c[0] == "validated"] == validated
    # The figures land in the entry of the step validated; the last step is validated at the end.
    assert [h["iteration"] for h in toy.history if "score" in h] == validated
    # Every 3 s of training time (steps and validations), whatever the iteration.
    assert [c[2] for c in toy.calls if c[0] == "checkpoint"] == [3.0, 6.0, 9.0]
    assert [e.message for e in events].count("validating") == len(validated)
    assert _rising_to_one(events)


@pytest.mark.parametrize("how", ["stop", "stop while validating", "error"])
def test_stop_and_errors_still_finish_and_restore_the_threads(how):
    threads = torch.get_num_threads()
    toy = Toy(FakeTime(), fail_at=3 if how == "error" else None)
    job = _job(toy, max_iters=10, validation_every_s=1.5, now=toy.clock, threads=threads + 1)
    if how == "error":
        with pytest.raises(RuntimeError, match="the step failed"):
            run_job(job)
    else:
        wanted = "validating" if how == "stop while validating" else "step 2"
        for event in job:
            if event.message == wanted:
                break
        job.close()
    assert set(toy.threads) == {threads + 1} and torch.get_num_threads() == threads
    assert toy.calls[-1] == ("finish", False, 2, 2.0)
    validations = [c[0] for c in toy.calls if c[1] == 2 and c[0].startswith("validat")]
    assert validations == (
        ["validation stopped"] if how == "stop while validating" else ["validated"]
    )


def test_other_processes_neither_validate_nor_checkpoint_and_all_stop_together():
    class Follower(Toy):
        is_main = False

        def agree(self, go_on: bool) -> bool:
            return go_on and self.iteration < 3  # as if another process ran out first

    toy = Follower(FakeTime())
    run_job(_job(toy, max_iters=10, validation_every_s=0.0, checkpoint_every_s=0.0, now=toy.clock))
    assert len(toy.history) == 3
    assert toy.calls == [("finish", True, 3, 3.0)]


def test_concluding_work_takes_the_rest_of_the_bar_and_no_training_time():
    class Concluding(Toy):
        saving = "saving the generator"

        def conclude(self) -> Job[None]:
            self.clock.now += 50.0
            yield Progress(0.5, "measuring")

    toy = Concluding(FakeTime())
    events: list[Progress] = []
    run_job(_job(toy, max_iters=2, share=0.9, now=toy.clock), events.append)
    assert [(e.fraction, e.message) for e in events[-4:]] == [
        (0.45, "step 1"),
        (0.9, "step 2"),
        (pytest.approx(0.95), "measuring"),
        (1.0, "saving the generator"),
    ]
    assert toy.calls == [("finish", True, 2, 2.0)]

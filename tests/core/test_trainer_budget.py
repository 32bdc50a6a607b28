"""Training budgets in CPU seconds, the default batch, and the settings refused before training."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import run_job
from napari_medai.core.training import trainer
from napari_medai.core.training.trainer import DEFAULT_BATCH, TrainConfig, train_job
from napari_medai.core.volume import LabelMap

LIVER = 1
#: Idle wall time added to every step: a wall clock counts it, a CPU clock does not.
IDLE_S = 0.1


@pytest.fixture
def sparse_pair(phantom):
    """The phantom CT with the liver painted on three axial slices."""
    volume, organs = phantom
    sparse = np.zeros_like(organs.array)
    for z in (8, 12, 16):
        sparse[z] = np.where(organs.array[z] == LIVER, LIVER, 0)
    return volume, LabelMap(sparse, volume.geometry, {}, {LIVER: "liver"})


def _idle_steps(monkeypatch) -> None:
    """Every optimizer step also waits ``IDLE_S`` without using the CPU (a busy machine)."""
    step = trainer._Session.step

    def waiting_step(self, fraction):
        time.sleep(IDLE_S)
        return step(self, fraction)

    monkeypatch.setattr(trainer._Session, "step", waiting_step)


def _train(tmp_path, pair, **changes):
    config = TrainConfig(out_dir=tmp_path / "model", seed=0, device="cpu", num_threads=1, **changes)
    return run_job(train_job([pair], config))


def test_a_cpu_budget_counts_the_training_process_cpu_time(tmp_path, sparse_pair, monkeypatch):
    _idle_steps(monkeypatch)
    budget = 0.3
    cpu_before = time.process_time()
    result = run_job(
        train_job(
            [sparse_pair],
            TrainConfig(
                out_dir=tmp_path / "model",
                max_time_s=budget,
                budget_clock="cpu",
                seed=0,
                device="cpu",
                num_threads=1,
            ),
        )
    )
    cpu_used = time.process_time() - cpu_before
    trained_s = result.history[-1]["elapsed_s"]
    # The loop stops at the first check after its clock passed the budget ...
    assert trained_s >= budget
    # ... and that clock is part of this process's CPU time, on any CPU. A wall clock
    # would also count the idle waits (IDLE_S per step: over a second here, more
    # than preparing the data and validating take of CPU).
    assert trained_s <= cpu_used
    assert result.card.training["budget_clock"] == "cpu"


def test_a_wall_budget_counts_idle_time_too(tmp_path, sparse_pair, monkeypatch):
    _idle_steps(monkeypatch)
    result = _train(tmp_path, sparse_pair, max_time_s=0.3)
    # Three steps of IDLE_S pass the budget however fast the CPU is.
    assert result.history[-1]["iteration"] <= 3
    assert result.card.training["budget_clock"] == "wall"


def test_slice_models_train_on_small_batches_by_default(tmp_path, sparse_pair):
    result = _train(tmp_path, sparse_pair, max_iters=1, max_time_s=None)
    assert result.card.training["dimensionality"] == "2.5d"
    assert result.card.training["batch_size"] == DEFAULT_BATCH == 2


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"budget_clock": "gpu"}, "counts wall or cpu seconds"),
        ({"num_threads": 0}, "at least 1 thread"),
    ],
)
def test_bad_budget_settings_are_refused_before_training(tmp_path, sparse_pair, changes, words):
    config = TrainConfig(out_dir=tmp_path / "model", device="cpu", **changes)
    with pytest.raises(MedaiError, match=words):
        train_job([sparse_pair], config)

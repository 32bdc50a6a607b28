"""``napari-medai train --budget-clock cpu --threads N``: a budget in CPU seconds, from the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.cli import main
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.models.package import load_model_package
from napari_medai.core.volume import LabelMap, volume_to_sitk


@pytest.fixture
def train_argv(tmp_path, phantom) -> list[str]:
    """``train`` on the phantom CT with its organs painted on two axial slices, on the CPU."""
    volume, organs = phantom
    sparse = np.zeros_like(organs.array)
    sparse[[9, 15]] = organs.array[[9, 15]]
    image_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "ct_labels.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(image_path))
    write_label_map(LabelMap(sparse, volume.geometry, {}, dict(organs.label_names)), labels_path)
    return ["train", str(image_path), str(labels_path), "--out", str(tmp_path / "model")]


def test_cpu_budget_and_threads_reach_the_trainer(tmp_path, train_argv, capsys):
    options = ["--max-time", "0.5", "--budget-clock", "cpu", "--threads", "1", "--seed", "0"]

    assert main([*train_argv, *options, "--device", "cpu"]) == 0

    assert "CPU-s" in capsys.readouterr().out
    card, _ = load_model_package(tmp_path / "model.checkpoints" / "last")
    assert card.training["budget_clock"] == "cpu"
    assert card.training["threads"] == 1
    # The loop stops at its first check after the CPU clock passed the budget.
    assert card.training["training_time_s"] >= 0.5


def test_no_threads_is_refused_in_words(train_argv, capsys):
    assert main([*train_argv, "--threads", "0", "--device", "cpu"]) == 2
    assert "at least 1 thread" in capsys.readouterr().err


def test_an_unknown_budget_clock_is_refused(train_argv):
    with pytest.raises(SystemExit):
        main([*train_argv, "--budget-clock", "gpu"])

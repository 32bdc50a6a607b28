"""``napari-medai train`` end to end on tiny NIfTI files, then ``segment`` with the result."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.cli import main
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.models.package import load_model_package
from napari_medai.core.volume import LabelMap, volume_to_sitk


@pytest.fixture
def files(tmp_path, phantom):
    """The phantom CT and its organs painted on two axial slices, as NIfTI files."""
    volume, organs = phantom
    sparse = np.zeros_like(organs.array)
    sparse[[9, 15]] = organs.array[[9, 15]]
    image_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "ct_labels.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(image_path))
    write_label_map(LabelMap(sparse, volume.geometry, {}, dict(organs.label_names)), labels_path)
    return image_path, labels_path, sparse


def test_train_then_segment_with_the_result(tmp_path, files, capsys):
    image_path, labels_path, sparse = files
    model = tmp_path / "model"
    argv = ["train", str(image_path), str(labels_path), "--out", str(model)]
    code = main([*argv, "--max-iters", "3", "--seed", "0", "--device", "cpu"])
    assert code == 0
    out, err = capsys.readouterr()
    assert str(model) in out and "training" in err
    card, _ = load_model_package(model)
    assert card.training["dimensionality"] == "2.5d"
    assert set(card.label_names) == set(np.unique(sparse).tolist())
    assert (tmp_path / "model.checkpoints" / "last" / "card.json").is_file()

    masks = tmp_path / "masks"
    assert main(["segment", str(image_path), "--model", str(model), "--out", str(masks)]) == 0
    (mask_path,) = masks.glob("*_seg.nii.gz")
    image = read_volume(image_path)
    mask = read_label_map(mask_path)
    assert mask.array.shape == image.spatial_shape
    assert mask.geometry.is_close(image.geometry)

    assert main([*argv, "--max-iters", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--max-iters", "2", "--resume", "--device", "cpu"]) == 0
    card, _ = load_model_package(tmp_path / "model.checkpoints" / "last")
    assert card.training["iterations"] == 5


def test_files_must_come_in_pairs(tmp_path, files, capsys):
    image_path, labels_path, _ = files
    argv = ["train", str(image_path), str(labels_path), str(image_path), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "pairs" in capsys.readouterr().err


# A budget in CPU seconds (--budget-clock cpu) and the thread count, from the CLI.


@pytest.fixture
def train_argv(tmp_path, files) -> list[str]:
    image_path, labels_path, _ = files
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

"""The Train dock and ``napari-medai train`` start the same training from the same inputs.

Issue 22 asks the GUI to reach the CLI's Dice in the same wall time
(``bench/train_gui.py`` measures it). That needs the dock to hand its job what
the CLI hands its own: the same scan and painted slices, and a config equal
field by field (budget, clock, threads, seed, batch, learning rate,
augmentation...), the output folder aside. Nothing is trained here: both
job calls are caught before they start.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Layer

from napari_medai import cli
from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._qt.train_widget import TrainWidget
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.io.writing import write_label_map, write_volume
from napari_medai.core.training.config import TrainConfig
from napari_medai.core.volume import LabelMap

LIVER = 1


class Caught(Exception):
    """Raised by the stand-in for the CLI's training job, carrying what it was given."""


@pytest.fixture
def painted_files(phantom, tmp_path):
    """The phantom scan and its liver painted on three axial slices, written as NIfTI."""
    volume, truth = phantom
    sparse = np.zeros_like(truth.array)
    for z in (6, 12, 18):
        sparse[z] = np.where(truth.array[z] == LIVER, LIVER, 0)
    scan = write_volume(volume, tmp_path / "scan.nii.gz")
    labels = write_label_map(LabelMap(sparse, volume.geometry), tmp_path / "painted.nii.gz")
    return scan, labels


def cli_training(monkeypatch, argv: list[str]) -> tuple[list, TrainConfig]:
    """The pairs and config ``napari-medai train`` hands its training job."""

    def catch(pairs, config):
        raise Caught(pairs, config)

    monkeypatch.setattr("napari_medai.core.training.trainer.train_job", catch)
    with pytest.raises(Caught) as caught:
        cli.main(argv)
    return caught.value.args


def dock_training(qtbot, monkeypatch, files, settings: dict) -> tuple[list, TrainConfig]:
    """The pairs and config the Train dock hands its job when Train is clicked."""
    scan = read_volume(files[0])
    viewer = ViewerModel()
    image = viewer.add_layer(Layer.create(*image_layer_data(scan)))
    painted = read_label_map(files[1], reference=scan)
    labels = viewer.add_layer(Layer.create(*labels_layer_data(painted, "painted")))
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.pair_rows[0].image_combo.value = image
    widget.pair_rows[0].labels_combo.value = labels
    for name, value in settings.items():
        getattr(widget, name).value = value
    started = []
    monkeypatch.setattr(widget.runner, "start", lambda job, *_a, **_k: started.append(job))
    widget.train_button.native.click()
    [job] = started
    return job.args


@pytest.mark.parametrize(
    ("budget", "clock", "threads", "seed"),
    [(5.0, "wall", 1, 0), (10.0, "cpu", 2, 3)],
    ids=["5-wall-s-1-thread", "10-cpu-s-2-threads"],
)
def test_the_dock_starts_the_training_the_cli_starts(
    qtbot, monkeypatch, tmp_path, painted_files, budget, clock, threads, seed
):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "models"))
    out = tmp_path / "cli-model"
    cli_pairs, cli_config = cli_training(
        monkeypatch,
        ["train", *map(str, painted_files), "--out", str(out), "--max-time", f"{budget:g}"]
        + ["--budget-clock", clock, "--threads", str(threads), "--seed", str(seed)],
    )
    settings = {
        "time_spin": budget,
        "clock_combo": clock,
        "threads_combo": threads,
        "seed_edit": str(seed),
    }
    dock_pairs, dock_config = dock_training(qtbot, monkeypatch, painted_files, settings)

    # Field by field (clock, threads, seed, batch, learning rate, augmentation, ...).
    assert replace(dock_config, out_dir=out) == cli_config
    [(dock_scan, dock_labels)], [(cli_scan, cli_labels)] = dock_pairs, cli_pairs
    np.testing.assert_array_equal(dock_scan.array, cli_scan.array)
    np.testing.assert_array_equal(dock_labels.array, cli_labels.array)
    assert dock_scan.geometry.is_close(cli_scan.geometry, tol=1e-6)
    assert dock_labels.geometry.is_close(cli_labels.geometry, tol=1e-6)


def test_a_random_seed_is_left_to_the_engine(qtbot, monkeypatch, tmp_path, painted_files):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "models"))
    _pairs, config = dock_training(qtbot, monkeypatch, painted_files, {})
    assert config.seed is None

"""The Evaluate dock pairs labels by name, says how it matched them, and refuses 2D layers."""

from __future__ import annotations

import json

import numpy as np
from napari.layers import Layer

from napari_medai._napari.layers import labels_layer_data
from napari_medai._qt.evaluate_widget import EvaluateWidget
from napari_medai.core.geometry import Geometry
from napari_medai.core.volume import LabelMap


def _add(viewer, array: np.ndarray, names: dict[int, str], name: str) -> None:
    label_map = LabelMap(array, Geometry((3.0, 1.5, 1.5)), {}, names)
    data, kwargs, kind = labels_layer_data(label_map, name)
    viewer.add_layer(Layer.create(data, kwargs, kind))


def test_a_liver_model_is_scored_against_the_reference_liver(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    organs = np.zeros((10, 30, 30), dtype=np.uint8)
    organs[2:8, 3:14, 3:14], organs[2:8, 18:27, 18:27] = 5, 1  # TotalSegmentator: 5 liver, 1 spleen
    _add(viewer, organs, {1: "spleen", 5: "liver"}, "TotalSegmentator")
    _add(viewer, (organs == 5).astype(np.uint8), {1: "liver"}, "liver model")
    dock = EvaluateWidget(viewer)
    dock.prediction.value = viewer.layers["liver model"]
    dock.reference.value = viewer.layers["TotalSegmentator"]
    dock.evaluate_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.running, timeout=30000)
    [liver] = dock.result.labels
    assert (liver.name, liver.predicted_value, liver.value, liver.dice) == ("liver", 1, 5, 1.0)
    row = [dock.table.data[0][column] for column in range(3)]
    assert row == [5, 1, "liver"]
    assert "labels matched by name (liver 1 -> 5)" in dock.status.value
    assert "not scored" in dock.status.value and "spleen (1)" in dock.status.value
    dock.json_path.value = tmp_path / "scores.json"
    dock.save_button.native.click()
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["matching"] == "by name" and saved["pairs"][0]["reference_value"] == 5


def test_a_2d_layer_disables_evaluate_and_says_why(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((30, 30), dtype=np.uint8), name="drawing")
    _add(viewer, np.zeros((10, 30, 30), dtype=np.uint8), {}, "reference")
    dock = EvaluateWidget(viewer)
    dock.prediction.value = viewer.layers["drawing"]
    dock.reference.value = viewer.layers["reference"]
    assert not dock.evaluate_button.enabled
    assert "'drawing' is 2D" in dock.evaluate_button.tooltip

"""Label statistics and evaluation metrics on small synthetic label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job
from napari_medai.core.evaluation.statistics import label_statistics, statistics_csv
from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap, Volume

SPACING = (3.0, 1.5, 0.8)


def _ball(shape, centre, radius_mm, spacing=SPACING):
    grid = np.indices(shape).astype(float)
    distance = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return distance <= radius_mm**2


@pytest.fixture
def pair():
    shape = (20, 40, 60)
    reference = np.zeros(shape, dtype=np.uint8)
    reference[_ball(shape, (10, 20, 30), 14)] = 1
    reference[_ball(shape, (6, 8, 10), 5)] = 4
    prediction = np.zeros(shape, dtype=np.uint8)
    prediction[_ball(shape, (10, 21, 32), 13)] = 1
    prediction[_ball(shape, (15, 30, 50), 4)] = 2  # a false positive only
    geometry = Geometry(SPACING, (5.0, -3.0, 2.0))
    return (
        LabelMap(prediction, geometry, {}, {1: "liver"}),
        LabelMap(reference, geometry, {}, {1: "liver", 4: "kidney"}),
    )


def test_statistics_count_volume_and_intensity(pair):
    _, labels = pair
    image = np.random.default_rng(0).normal(40, 10, labels.spatial_shape).astype(np.float32)
    rows, warnings = label_statistics(labels, Volume(image, labels.geometry))
    assert warnings == [] and [row.value for row in rows] == [1, 4]
    liver = rows[0]
    inside = labels.array == 1
    assert liver.voxels == int(inside.sum()) and liver.name == "liver"
    assert liver.volume_ml == liver.voxels * (3.0 * 1.5 * 0.8) / 1000
    assert liver.mean == pytest.approx(float(image[inside].mean()), rel=1e-6)
    assert liver.std == pytest.approx(float(image[inside].std()), rel=1e-4)
    assert (liver.min, liver.max) == (float(image[inside].min()), float(image[inside].max()))
    assert statistics_csv(rows).splitlines()[0] == "value,name,voxels,volume_ml,mean,std,min,max"


def test_statistics_on_another_image_grid_resample_the_labels(pair):
    _, labels = pair
    coarse = Geometry((6.0, 3.0, 1.6), labels.geometry.origin)
    image = Volume(np.ones((10, 20, 30), dtype=np.int16), coarse)
    rows, warnings = label_statistics(labels, image)
    assert "resampled" in warnings[0]
    assert rows[0].voxels == int((labels.array == 1).sum()) and rows[0].mean == 1.0


def test_a_mask_against_itself_scores_exactly_one_and_zero(pair):
    _, reference = pair
    result = run_job(evaluate_job(reference, reference))
    for scores in result.labels:
        assert scores.dice == 1.0 and scores.iou == 1.0 and scores.surface_dice == 1.0
        assert scores.hd95_mm == 0.0 and scores.assd_mm == 0.0


def test_scores_agree_with_monai_on_the_full_arrays(pair):
    prediction, reference = pair
    result = run_job(evaluate_job(prediction, reference, EvaluationConfig(tolerance_mm=1.5)))
    by_value = {scores.value: scores for scores in result.labels}
    assert set(by_value) == {1, 2, 4}
    assert by_value[2].dice == 0.0 and by_value[2].hd95_mm is None
    assert by_value[4].predicted_voxels == 0 and by_value[4].name == "kidney"
    y_pred = torch.from_numpy(prediction.array == 1)[None, None]
    y = torch.from_numpy(reference.array == 1)[None, None]
    liver = by_value[1]
    expected_hd = compute_hausdorff_distance(y_pred, y, True, percentile=95, spacing=SPACING)
    expected_assd = compute_average_surface_distance(y_pred, y, True, True, spacing=SPACING)
    expected_nsd = compute_surface_dice(y_pred, y, [1.5], True, spacing=SPACING)
    assert liver.hd95_mm == pytest.approx(float(expected_hd), abs=1e-5)
    assert liver.assd_mm == pytest.approx(float(expected_assd), abs=1e-5)
    assert liver.surface_dice == pytest.approx(float(expected_nsd), abs=1e-6)
    assert liver.dice == pytest.approx(float(compute_dice(y_pred, y, True)), abs=1e-6)
    assert liver.iou == pytest.approx(float(compute_iou(y_pred, y, True)), abs=1e-6)


def test_a_prediction_on_another_grid_is_resampled(pair):
    _, reference = pair
    fine = Geometry(np.array(SPACING) / 2, reference.geometry.origin - np.array(SPACING) / 4)
    upsampled = np.repeat(np.repeat(np.repeat(reference.array, 2, 0), 2, 1), 2, 2)
    result = run_job(evaluate_job(LabelMap(upsampled, fine, {}, {}), reference))
    assert "resampled" in result.warnings[0]
    assert all(scores.dice == 1.0 for scores in result.labels)

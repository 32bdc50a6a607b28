"""Label statistics and evaluation metrics on small synthetic label maps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import write_series
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from napari_medai.cli import main
from napari_medai.core.errors import MedaiError
from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job
from napari_medai.core.evaluation.statistics import label_statistics, statistics_csv
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.reading import read_volume
from napari_medai.core.io.writing import label_sidecar, write_label_map, write_sidecar
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
    names = {1: "liver", 2: "spleen", 4: "kidney"}
    return LabelMap(prediction, geometry, {}, names), LabelMap(reference, geometry, {}, names)


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


def test_statistics_count_the_values_present_however_large_or_negative():
    """One slot per value present: a label 2**31-1 used to ask bincount for 17 GB."""
    array = np.zeros((4, 5, 6), dtype=np.int64)
    array[0, 0, :2] = 2**31 - 1
    array[1, :, 0] = -3
    array[3, 4, 5] = 7
    labels = LabelMap(array, Geometry((2.0, 1.0, 1.0)))
    image = Volume(np.arange(array.size, dtype=np.float32).reshape(array.shape), labels.geometry)
    rows, _ = label_statistics(labels, image)
    assert [(row.value, row.voxels) for row in rows] == [(-3, 5), (7, 1), (2**31 - 1, 2)]
    assert rows[2].mean == float(image.array[0, 0, :2].mean())
    assert rows[1].min == rows[1].max == float(image.array[3, 4, 5])


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


def _organs(values: dict[str, int], names: bool = True, shape=(12, 30, 30)) -> LabelMap:
    """Liver and spleen balls numbered by ``values`` (name -> value), named or not."""
    array = np.zeros(shape, dtype=np.uint8)
    array[_ball(shape, (6, 10, 10), 8)] = values["liver"]
    array[_ball(shape, (6, 20, 21), 6)] = values["spleen"]
    label_names = {value: name for name, value in values.items()} if names else {}
    return LabelMap(array, Geometry(SPACING), {}, label_names)


def test_labels_are_matched_by_name_when_both_maps_name_them():
    # The case: a model numbers liver 1, TotalSegmentator numbers liver 5, spleen 1.
    reference = _organs({"liver": 5, "spleen": 1})
    prediction = LabelMap(
        np.where(reference.array == 5, 1, 0).astype(np.uint8), reference.geometry, {}, {1: "Liver"}
    )
    result = run_job(evaluate_job(prediction, reference))
    assert result.matching.by == "by name"
    [liver] = result.labels
    assert (liver.name, liver.predicted_value, liver.value, liver.dice) == ("liver", 1, 5, 1.0)
    assert [(u.value, u.name) for u in result.matching.unmatched_reference] == [(1, "spleen")]
    assert any("not scored" in w and "spleen (1)" in w for w in result.warnings)
    summary = result.to_dict()
    assert summary["matching"] == "by name"
    assert summary["pairs"] == [{"name": "liver", "predicted_value": 1, "reference_value": 5}]
    assert summary["unmatched_reference_labels"] == [{"value": 1, "name": "spleen"}]


def test_names_known_on_one_side_only_fall_back_to_values_and_say_so():
    reference = _organs({"liver": 5, "spleen": 1})
    unnamed = _organs({"liver": 5, "spleen": 1}, names=False)
    result = run_job(evaluate_job(unnamed, reference))
    assert result.matching.by == "by value"
    assert "the prediction carries no label names" in result.warnings[0]
    scored = [(s.value, s.name, s.dice) for s in result.labels]
    assert scored == [(1, "spleen", 1.0), (5, "liver", 1.0)]


def test_names_that_share_nothing_fall_back_to_values_and_say_so():
    reference = _organs({"liver": 5, "spleen": 1})
    prediction = _organs({"liver": 5, "spleen": 1}, names=False)
    prediction.label_names = {5: "Leber", 1: "Milz"}
    result = run_job(evaluate_job(prediction, reference))
    assert result.matching.by == "by value"
    assert "share no label name" in result.warnings[0] and "leber" in result.warnings[0]


def test_one_name_for_two_labels_falls_back_to_values():
    reference = _organs({"liver": 5, "spleen": 1})
    prediction = _organs({"liver": 5, "spleen": 1}, names=False)
    prediction.label_names = {5: "organ", 1: "organ"}
    result = run_job(evaluate_job(prediction, reference))
    assert result.matching.by == "by value" and "organ: 1, 5" in result.warnings[0]


@pytest.mark.parametrize("huge", [2**31 - 1, 100_000_000])
def test_a_huge_label_value_is_scored_without_a_slot_per_value(huge):
    shape = (40, 40, 40)
    reference = np.zeros(shape, dtype=np.int32)
    reference[10:30, 10:30, 10:30] = 1
    prediction = reference.copy()
    prediction[15:25, 15:25, 15:25] = huge
    maps = LabelMap(prediction, Geometry()), LabelMap(reference, Geometry())
    run_job(evaluate_job(*maps))  # imports MONAI and torch first: not what is timed
    started = time.perf_counter()
    result = run_job(evaluate_job(*maps))
    # Before: MemoryError at 2**31 - 1 and 35 s at 1e8. A 40^3 pair takes milliseconds;
    # 5 s leaves room for any slow, shared CPU while still catching a per-value loop.
    assert time.perf_counter() - started < 5.0
    by_value = {s.value: s for s in result.labels}
    assert by_value[huge].predicted_voxels == 1000 and by_value[huge].reference_voxels == 0
    assert by_value[1].dice == pytest.approx(2 * 7000 / (7000 + 8000))


def test_a_prediction_far_from_the_reference_is_refused(pair):
    prediction, reference = pair
    far = Geometry(SPACING, reference.geometry.origin + np.array([0.0, 0.0, 1000.0]))
    with pytest.raises(MedaiError, match="does not overlap.*1000 mm apart"):
        run_job(evaluate_job(LabelMap(prediction.array, far), reference))


def test_a_partly_shifted_prediction_is_scored_and_the_warning_gives_the_offset(pair):
    prediction, reference = pair
    shifted = Geometry(SPACING, reference.geometry.origin + np.array([0.0, 0.0, 8.0]))
    result = run_job(evaluate_job(LabelMap(prediction.array, shifted), reference))
    assert "resampled" in result.warnings[0] and "8.0 mm from the reference" in result.warnings[0]


def test_a_2d_map_against_a_3d_one_is_refused(pair):
    _, reference = pair
    flat = LabelMap(reference.array[10:11], reference.geometry)
    with pytest.raises(MedaiError, match="2D map .* 3D one"):
        run_job(evaluate_job(flat, reference))


def test_two_single_slices_are_scored_in_2d():
    # A 3D view of one slice would make every voxel a surface voxel; in 2D only the rim is.
    shape = (1, 40, 40)
    disc = _ball(shape, (0, 20, 20), 12)
    reference = LabelMap(disc.astype(np.uint8), Geometry(SPACING))
    shifted = LabelMap(np.roll(disc, 2, axis=2).astype(np.uint8), Geometry(SPACING))
    result = run_job(evaluate_job(shifted, reference))
    assert result.spacing_mm == list(SPACING)  # the grid's own (z, y, x) spacing, all three
    [scores] = result.labels
    y_pred = torch.from_numpy(shifted.array[0] == 1)[None, None]
    y = torch.from_numpy(reference.array[0] == 1)[None, None]
    expected = compute_average_surface_distance(y_pred, y, True, True, spacing=SPACING[1:])
    assert scores.assd_mm == pytest.approx(float(expected), abs=1e-5)


def test_a_negative_label_is_refused_naming_the_map(pair):
    prediction, reference = pair
    negative = prediction.array.astype(np.int16)
    negative[0, 0, 0] = -3
    labels = LabelMap(negative, prediction.geometry, {"source": "model_out.nii.gz"})
    with pytest.raises(MedaiError, match=r"prediction \(model_out.nii.gz\) holds negative.*-3"):
        run_job(evaluate_job(labels, reference))


@pytest.mark.parametrize("tolerance", [-1.0, 0.0, float("nan"), float("inf")])
def test_a_meaningless_tolerance_is_refused(tolerance):
    with pytest.raises(MedaiError, match="tolerance must be a distance above 0 mm"):
        EvaluationConfig(tolerance)


def test_json_holds_null_with_a_reason_for_an_undefined_distance(pair):
    prediction, reference = pair
    result = run_job(evaluate_job(prediction, reference))
    text = json.dumps(result.to_dict(), allow_nan=False)
    kidney = next(s for s in json.loads(text)["labels"] if s["name"] == "kidney")
    assert kidney["hd95_mm"] is None and "prediction has no voxel" in kidney["note"]


def _write_with_sidecar(label_map: LabelMap, path: Path) -> Path:
    """The mask and its JSON sidecar, as the writer saves them beside a segmentation."""
    write_label_map(label_map, path)
    sidecar = label_sidecar(label_map, input_name=None, outputs={"mask": path.name})
    write_sidecar(sidecar, path.with_name(path.name.split(".")[0] + ".json"))
    return path


def test_cli_matches_sidecar_names_and_says_so(tmp_path, capsys):
    reference = _organs({"liver": 5, "spleen": 1})
    model_output = LabelMap(
        np.where(reference.array == 5, 1, 0).astype(np.uint8), reference.geometry, {}, {1: "liver"}
    )
    truth = _write_with_sidecar(reference, tmp_path / "truth.nii.gz")
    predicted = _write_with_sidecar(model_output, tmp_path / "liver_model.nii.gz")
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(predicted), str(truth), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "labels matched by name (liver 1 -> 5)" in printed.err
    assert "not scored" in printed.err and "spleen (1)" in printed.err
    summary = json.loads(out.read_text())
    assert summary == json.loads(printed.out)
    assert summary["matching"] == "by name"
    [liver] = summary["labels"]
    assert (liver["name"], liver["predicted_value"], liver["value"]) == ("liver", 1, 5)
    assert liver["dice"] == 1.0


@pytest.mark.parametrize("tolerance", ["nan", "-1", "inf"])
def test_cli_refuses_a_meaningless_tolerance_in_one_line(tmp_path, capsys, tolerance):
    mask = _write_with_sidecar(_organs({"liver": 5, "spleen": 1}), tmp_path / "mask.nii.gz")
    assert main(["evaluate", str(mask), str(mask), f"--tolerance={tolerance}"]) == 2
    printed = capsys.readouterr()
    assert "tolerance must be a distance above 0 mm" in printed.err and printed.out == ""


def test_cli_scores_a_dicom_seg_by_its_segment_labels(tmp_path, capsys):
    folder = tmp_path / "series"
    write_series(folder, np.zeros((6, 24, 20), dtype=np.int16))
    scan = read_volume(folder)
    organs = np.zeros(scan.spatial_shape, dtype=np.uint8)
    organs[1:5, 2:12, 2:10], organs[1:5, 14:22, 10:18] = 2, 3
    truth = _write_with_sidecar(
        LabelMap(organs, scan.geometry, {}, {2: "liver", 3: "spleen"}), tmp_path / "truth.nii.gz"
    )
    seg = tmp_path / "truth_seg.dcm"
    assert main(["export", str(truth), "--like", str(folder), "--out", str(seg)]) == 0
    liver_only = LabelMap((organs == 2).astype(np.uint8), scan.geometry, {}, {1: "Liver"})
    predicted = _write_with_sidecar(liver_only, tmp_path / "pred.nii.gz")
    capsys.readouterr()
    assert main(["evaluate", str(predicted), str(seg), "--image", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["matching"] == "by name"
    [liver] = summary["labels"]
    assert liver["name"] == "liver" and liver["predicted_value"] == 1 and liver["dice"] == 1.0


@pytest.mark.real
def test_a_liver_model_against_totalsegmentators_real_map(shared_data):
    from scipy.ndimage import binary_erosion

    from napari_medai.core.io.reading import read_label_map
    from napari_medai.core.samples import TOTALSEG_LABEL_NAMES

    reference = read_label_map(shared_data / "totalsegmentator" / "example_seg.nii.gz")
    reference.label_names = dict(TOTALSEG_LABEL_NAMES)
    liver = binary_erosion(reference.array == 5)  # a model a voxel short of the truth
    prediction = LabelMap(liver.astype(np.uint8), reference.geometry, {}, {1: "liver"})
    result = run_job(evaluate_job(prediction, reference))
    [scores] = result.labels
    assert (scores.name, scores.predicted_value, scores.value) == ("liver", 1, 5)
    truth = reference.array == 5
    assert scores.dice == pytest.approx(2 * liver.sum() / (liver.sum() + truth.sum()))
    unmatched = {label.name for label in result.matching.unmatched_reference}
    assert "spleen" in unmatched and "liver" not in unmatched

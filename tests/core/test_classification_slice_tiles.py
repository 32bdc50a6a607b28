"""Every slice through a classifier that learnt from boxes: windowed verdicts, whole-slice heat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medai.core.classification.config import ClassificationError, ClassifyConfig, Region
from napari_medai.core.classification.evaluation import evaluate_job
from napari_medai.core.classification.examples import examples_from_regions
from napari_medai.core.classification.heldout import HeldOutSet
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.classification.slice_tiles import SliceWindows, WholeSlices, learnt_box
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.volume import LabelMap, Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEARNT_FROM_BOXES = {"sources": [{"kind": "boxes", "count": 40, "box": [16.0, 16.0]}]}


def _card(**changes) -> ModelCard:
    fields = {
        "name": "spot finder",
        "architecture": "DenseNet",
        "architecture_args": {},
        "label_names": {0: "no spot", 1: "spot"},
        "patch_size": [1, 16, 16],
        "task": "classification",
        "spatial_dims": 2,
        "intensity": {"kind": "window", "low": 0, "high": 100},
        "training": LEARNT_FROM_BOXES,
    }
    return ModelCard(**{**fields, **changes})


def _spot_model(**changes) -> LoadedModel:
    """Says "spot" when a window's mean brightness is high: a 1x1 conv, pooled.

    The class-1 logit map is 40 x brightness - 1, so an empty window says "no
    spot" (p 0.27) and one holding a bright 4x4 spot says "spot" (p 0.82); the
    same spot averaged over a whole 64x64 slice says "no spot" (p 0.30).
    Grad-CAM of class 1 is the (normalised) brightness where it beats 1/40.
    """
    conv = torch.nn.Conv2d(1, 1, 1)
    score = torch.nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(40.0)
        conv.bias.fill_(-1.0)
        score.weight.copy_(torch.tensor([[0.0], [1.0]]))
        score.bias.zero_()
    network = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), score)
    return LoadedModel(_card(**changes), network.eval(), "memory", "")


def _scan() -> np.ndarray:
    """Six 64x64 slices; bright 4x4 spots on slices 1 and 4, anywhere in the slice."""
    scan = np.zeros((6, 64, 64), dtype=np.float32)
    scan[1, 50:54, 5:9] = 100.0
    scan[4, 20:24, 40:44] = 100.0
    return scan


def test_every_slice_of_a_box_model_is_judged_by_its_windows_and_heated_whole():
    scan = _scan()
    config = ClassifyConfig(scope="slices", cam=True, cam_class=1)
    result = run_job(classify_job(Volume(scan, metadata={}), _spot_model(), config))
    assert [p.label for p in result.predictions] == [0, 1, 0, 0, 1, 0]
    assert min(result.curve(1)[z] for z in (1, 4)) > 0.8
    assert max(result.curve(1)[z] for z in (0, 2, 3, 5)) < 0.3
    np.testing.assert_allclose(result.cam.array, scan / 100.0, atol=1e-5)
    read = result.provenance["slices_read_as_windows"]
    assert read["box"] == [16, 16] and read["windows_per_slice"] == 49
    assert "other than 'no spot'" in read["verdict"]
    assert result.summary("spots") == (
        "6 slices classified with spots, each read as 16x16-pixel windows like the boxes it "
        "learnt from"
    )


def test_without_box_training_a_slice_is_squeezed_to_the_patch_and_the_spot_is_lost():
    """The same network as a slice classifier (no boxes on its card) misses both spots."""
    model = _spot_model(training={"sources": [{"kind": "slices", "axis": "z", "count": 9}]})
    result = run_job(classify_job(Volume(_scan(), metadata={}), model, ClassifyConfig("slices")))
    assert [p.label for p in result.predictions] == [0] * 6
    assert "slices_read_as_windows" not in result.provenance


def test_windows_tile_every_pixel_half_a_box_apart_and_stay_inside():
    volume = Volume(np.zeros((2, 40, 23), dtype=np.float32), metadata={})
    windows = SliceWindows(volume, _card(), (16, 10))
    covered = np.zeros(volume.spatial_shape, dtype=int)
    for region in windows.regions:
        assert region.size == (1, 16, 10)
        assert min(region.start) >= 0 and region.stop[1] <= 40 and region.stop[2] <= 23
        covered[tuple(map(slice, region.start, region.stop))] += 1
    assert covered.min() >= 1
    assert windows.per_slice == 4 * 4  # y: 0, 8, 16, 24; x: 0, 5, 10, 13
    assert [r.start[0] for r in windows.regions] == [0] * 16 + [1] * 16


def test_whole_slices_are_read_at_the_scale_the_boxes_became_the_patch():
    volume = Volume(np.zeros((2, 64, 48), dtype=np.float32), metadata={})
    assert WholeSlices(volume, _card(), (32, 32)).patch == [32, 24]
    assert WholeSlices(volume, _card(), (16, 16)).patch == [64, 48]


@pytest.mark.parametrize(
    ("training", "box"),
    [
        (LEARNT_FROM_BOXES, (16, 16)),
        (
            {"sources": [{"kind": "boxes", "box": [30, 34]}, {"kind": "boxes", "box": [34, 38]}]},
            (32, 36),
        ),
        ({"sources": [{"kind": "boxes", "count": 3}]}, (16, 16)),
        ({"sources": [{"kind": "boxes", "box": "big"}]}, (16, 16)),
        ({"sources": [{"kind": "boxes"}, {"kind": "slices"}]}, None),
        ({"sources": "boxes"}, None),
        ({}, None),
    ],
)
def test_the_box_size_comes_from_the_card_and_junk_is_ignored(training, box):
    assert learnt_box(_card(training=training)) == box


def test_training_from_boxes_records_their_median_size():
    volume = Volume(np.zeros((3, 64, 64), dtype=np.float32), metadata={})
    regions = [Region((0, 0, 0), (1, 20, 30)), Region((1, 0, 0), (2, 24, 30))]
    regions.append(Region((2, 0, 0), (3, 30, 34)))
    examples = examples_from_regions(volume, regions, [0, 1, 1], {0: "a", 1: "b"})
    assert examples.sources[0]["box"] == [24.0, 30.0]


def test_a_box_model_is_scored_on_label_slices_by_its_window_verdicts():
    volume = Volume(_scan(), metadata={})
    labels = LabelMap((_scan() > 0).astype(np.uint8), volume.geometry, label_names={1: "spot"})
    picked = HeldOutSet("scan", "spots", labels=labels, values=[1], slices=[1, 2, 3, 4])
    metrics = run_job(evaluate_job(_spot_model(), volume, picked))
    assert metrics["accuracy"] == 1.0 and metrics["macro"]["roc_auc"] == 1.0
    assert metrics["computed_on"]["cases"] == 4
    assert metrics["computed_on"]["model"] == "spot finder"
    assert metrics["computed_on"]["description"].endswith(
        "each slice read as box-sized windows (the model learnt from boxes)"
    )


def test_a_box_model_is_not_run_across_y_or_x():
    volume = Volume(_scan(), metadata={})
    with pytest.raises(ClassificationError, match="axial slices; classify its slices along z"):
        classify_job(volume, _spot_model(), ClassifyConfig(scope="slices", axis=1))

"""Classification jobs: scopes, model checks, boxes, Grad-CAM on the scan's grid, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medai.core.classification import inference
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifyConfig,
    Region,
    parse_axis,
)
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.classification.inputs import RegionInputs
from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model
from napari_medai.core.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}
WINDOW = {"kind": "window", "low": -160, "high": 240}


def _card(**changes) -> ModelCard:
    fields = {
        "name": "tiny",
        "architecture": "DenseNet",
        "architecture_args": dict(TINY),
        "label_names": {0: "other", 1: "liver", 2: "spleen"},
        "patch_size": [1, 16, 16],
        "task": "classification",
        "spatial_dims": 2,
        "intensity": WINDOW,
    }
    return ModelCard(**{**fields, **changes})


def _model(**changes) -> LoadedModel:
    card = _card(**changes)
    torch.manual_seed(0)
    return LoadedModel(card, build_network(card).eval(), "memory", "")


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    """A tiny 2D classifier saved as a package and loaded back through load_model."""
    card = _card()
    torch.manual_seed(0)
    folder = save_model_package(tmp_path_factory.mktemp("m") / "pkg", card, build_network(card))
    return load_model(folder)


@pytest.mark.parametrize(
    ("architecture", "args", "dims"),
    [("DenseNet", TINY, 2), ("DenseNet", TINY, 3), ("resnet10", {"widen_factor": 0.125}, 2)],
)
def test_classifier_architectures_give_one_score_per_class(architecture, args, dims):
    card = _card(architecture=architecture, architecture_args=args, spatial_dims=dims)
    network = build_network(card).eval()
    with torch.no_grad():
        out = network(torch.zeros(2, 1, *([16] * dims)))
    assert out.shape == (2, 3)


def test_every_slice_along_each_axis(model2d, phantom):
    ct, _ = phantom
    for axis in (0, 1, 2):
        result = run_job(classify_job(ct, model2d, ClassifyConfig(scope="slices", axis=axis)))
        assert len(result.predictions) == ct.spatial_shape[axis]
        table = np.array([p.probabilities for p in result.predictions])
        np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-5)
        assert [p.label for p in result.predictions] == table.argmax(1).tolist()
        assert len(result.curve(1)) == ct.spatial_shape[axis]
    assert result.to_dict()["axis"] == "x"
    assert result.provenance["model"] == "tiny" and result.provenance["inputs"] == 64


def test_boxes_match_the_bare_network_on_the_same_crops(model2d, phantom):
    ct, _ = phantom
    boxes = [Region((3, 10, 12), (4, 26, 28)), Region((7, 30, 30), (8, 46, 46))]
    result = run_job(classify_job(ct, model2d, ClassifyConfig(scope="regions"), boxes))
    crops = np.stack([ct.array[3, 10:26, 12:28], ct.array[7, 30:46, 30:46]]).astype(np.float32)
    batch = torch.from_numpy(np.clip((crops + 160) / 400, 0, 1))[:, None]
    with torch.no_grad():
        expected = torch.softmax(model2d.network(batch), 1).numpy()
    got = np.array([p.probabilities for p in result.predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert result.to_dict()["predictions"][1]["box"] == {"start": [7, 30, 30], "stop": [8, 46, 46]}


def test_bad_models_and_boxes_are_refused_with_a_reason(model2d, phantom):
    ct, _ = phantom
    cases = [
        (_model(task="segmentation"), "volume", None, "segmentation model, not a classifier"),
        (_model(in_channels=2), "slices", None, "takes 2 input channel"),
        (model2d, "volume", None, "2D classifier"),
        (_model(spatial_dims=3, patch_size=[8, 16, 16]), "slices", None, "3D classifier"),
        (model2d, "regions", [], "no boxes"),
        (model2d, "regions", [Region((40, 0, 0), (41, 16, 16))], "outside the image"),
        (model2d, "regions", [Region((2, 0, 0), (6, 16, 16))], "spans several slices"),
    ]
    for model, scope, regions, message in cases:
        with pytest.raises(ClassificationError, match=message):
            classify_job(ct, model, ClassifyConfig(scope=scope), regions)
    with pytest.raises(ClassificationError, match="slice axis"):
        parse_axis("w")
    with pytest.raises(ClassificationError, match="CAM class 7"):
        classify_job(ct, model2d, ClassifyConfig(scope="slices", cam=True, cam_class=7))


def test_a_box_partly_outside_is_padded(model2d, phantom):
    ct, _ = phantom
    box = Region((5, 56, 56), (6, 72, 72))
    result = run_job(classify_job(ct, model2d, ClassifyConfig(scope="regions", cam=True), [box]))
    assert len(result.predictions) == 1
    assert np.isfinite(result.cam.array).all()
    assert result.cam.array[:, :56].max() == 0


def test_cam_lies_on_the_scan_grid_for_every_scope(model2d, phantom):
    ct, _ = phantom
    config = ClassifyConfig(scope="slices", cam=True, cam_method="gradcampp")
    slices = run_job(classify_job(ct, model2d, config))
    assert slices.cam.array.shape == ct.spatial_shape
    assert slices.cam.geometry.is_close(ct.geometry)
    assert slices.cam.array.min() >= 0.0 and slices.cam.array.max() <= 1.0 + 1e-6
    assert slices.provenance["cam"]["layer"]

    boxes = [Region((4, 8, 8), (5, 24, 24))]
    regions = run_job(classify_job(ct, model2d, ClassifyConfig(scope="regions", cam=True), boxes))
    outside = regions.cam.array.copy()
    outside[4, 8:24, 8:24] = 0
    assert outside.max() == 0

    resampled = _model(
        spatial_dims=3, patch_size=[8, 16, 16], spacing=[12.0, 10.0, 10.0], orientation="RAS"
    )
    whole = run_job(classify_job(ct, resampled, ClassifyConfig(scope="volume", cam=True)))
    assert whole.cam.array.shape == ct.spatial_shape
    assert whole.cam.geometry.is_close(ct.geometry)
    assert whole.provenance["model_space"]["resampled"]
    assert len(whole.predictions) == 1


def test_cam_leaves_the_users_network_unhooked(model2d, phantom):
    ct, _ = phantom
    config = ClassifyConfig(scope="slices", cam=True, cam_layer="features.denseblock1")
    result = run_job(classify_job(ct, model2d, config))
    assert result.provenance["cam"]["layer"] == "features.denseblock1"
    hooked = [m for m in model2d.network.modules() if m._forward_hooks or m._backward_hooks]
    assert hooked == []
    with pytest.raises(ClassificationError, match="no layer 'nope'"):
        run_job(
            classify_job(ct, model2d, ClassifyConfig(scope="slices", cam=True, cam_layer="nope"))
        )


class _RunsOutOfMemoryOnce(torch.nn.Module):
    """Raises a GPU out-of-memory error on its first batch of more than one input."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 1 and not self.failed:
            self.failed = True
            raise RuntimeError("MPS backend out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_finishes(model2d, phantom):
    ct, _ = phantom
    model = LoadedModel(model2d.card, _RunsOutOfMemoryOnce(model2d.network), "memory", "")
    config = ClassifyConfig(scope="slices", batch_size=4)
    result = run_job(classify_job(ct, model, config))
    expected = run_job(classify_job(ct, model2d, config))
    assert result.provenance["fallbacks"] == [
        "out of memory on cpu: running 2 window(s) at a time instead of 4"
    ]
    np.testing.assert_allclose(
        [p.probabilities for p in result.predictions],
        [p.probabilities for p in expected.predictions],
        atol=1e-6,
    )


def test_stopping_early_leaves_the_model_as_it_was(model2d, phantom):
    ct, _ = phantom
    job = classify_job(ct, model2d, ClassifyConfig(scope="slices", batch_size=1, cam=True))
    next(job)
    next(job)
    job.close()
    assert model2d.network.training is False
    assert [m for m in model2d.network.modules() if m._forward_hooks] == []


def test_two_channel_images_feed_two_channel_models():
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(2, 6, 16, 16)).astype(np.float32))
    model = _model(in_channels=2, intensity={"kind": "zscore"})
    result = run_job(classify_job(volume, model, ClassifyConfig(scope="slices")))
    assert len(result.predictions) == 6
    with pytest.raises(MedaiError, match="takes 2"):
        classify_job(Volume(np.zeros((6, 16, 16))), model, ClassifyConfig(scope="slices"))


@pytest.mark.parametrize(
    "changes, channels, size",
    [
        ({}, 1, (1, 10, 12)),
        ({"context_slices": 1, "in_channels": 3}, 1, (1, 10, 12)),
        ({"in_channels": 2}, 2, (1, 10, 12)),
        ({"spatial_dims": 3, "patch_size": [4, 16, 16], "in_channels": 2}, 2, (5, 10, 12)),
    ],
)
def test_boxes_inside_the_image_read_their_voxels_unpadded(changes, channels, size):
    rng = np.random.default_rng(0)
    shape = (20, 40, 50) if channels == 1 else (channels, 20, 40, 50)
    array = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
    channel_first = array if channels > 1 else array[None]
    inside = [Region.around((z, 20 + z, 25 - z), size) for z in range(3, 17, 3)]
    card = _card(**changes)
    inputs = RegionInputs(Volume(array), card, inside)
    for index, region in enumerate(inside):
        (z0, y0, x0), (z1, y1, x1) = region.start, region.stop
        if card.spatial_dims == 3:
            expected = channel_first[:, z0:z1, y0:y1, x0:x1]
        elif card.context_slices:
            expected = array[[z0 - 1, z0, z0 + 1], y0:y1, x0:x1]
        else:
            expected = channel_first[:, z0, y0:y1, x0:x1]
        np.testing.assert_array_equal(inputs.raw(index), expected)
    cpu = torch.device("cpu")
    batch = inputs.read(list(range(len(inside))), cpu)
    one_by_one = torch.cat([inputs.read([i], cpu) for i in range(len(inside))])
    assert torch.equal(batch, one_by_one)
    assert batch.shape[:2] == (len(inside), card.in_channels)


def test_reading_boxes_of_several_sizes_leaves_a_float_scan_untouched():
    array = np.linspace(-500, 500, 20 * 40 * 50, dtype=np.float32).reshape(20, 40, 50)
    before = array.copy()
    boxes = [Region.around((5, 20, 25), (1, 10, 12)), Region.around((8, 20, 25), (1, 16, 8))]
    batch = RegionInputs(Volume(array), _card(), boxes).read([0, 1], torch.device("cpu"))
    assert batch.shape == (2, 1, 16, 16)
    np.testing.assert_array_equal(array, before)


def _brightness_model() -> LoadedModel:
    """A classifier whose class-1 Grad-CAM is its (normalised) input: a 1x1 conv, pooled.

    Grad-CAM weighs the one feature map by its mean gradient (a constant), so
    the heat of every pixel is proportional to its brightness.
    """
    conv = torch.nn.Conv2d(1, 1, 1)
    score = torch.nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        score.weight.copy_(torch.tensor([[0.0], [1.0]]))
        score.bias.zero_()
    network = torch.nn.Sequential(
        conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), score
    )
    card = _card(
        label_names={0: "no", 1: "yes"}, intensity={"kind": "window", "low": 0, "high": 100}
    )
    return LoadedModel(card, network.eval(), "memory", "")


@pytest.mark.parametrize("context", [0, 8])
def test_box_cam_with_context_is_cropped_to_the_box(context):
    """The window's heat lands on the box's own voxels; heat outside the box stays out.

    Box B, in the image's corner, has a window that leaves the image (read
    alone: the first batch holds one box). Box A holds a blob (50) at its
    edge, with a brighter spot (100) just outside it; it is read in one batch
    with box C, whose window also lies inside the image.
    """
    scan = np.zeros((3, 64, 64), dtype=np.float32)
    scan[1, 20:24, 28:36] = 50.0
    scan[1, 40:43, 40:43] = 100.0
    scan[1, 0:4, 60:64] = 50.0
    scan[2, 30:34, 40:42] = 20.0
    boxes = [
        Region((1, 0, 48), (2, 16, 64)),
        Region((1, 20, 20), (2, 36, 36)),
        Region((2, 26, 30), (3, 42, 46)),
    ]
    config = ClassifyConfig(scope="regions", cam=True, cam_class=1, cam_context=context)
    result = run_job(classify_job(Volume(scan, metadata={}), _brightness_model(), config, boxes))
    expected = np.zeros_like(scan)
    # With context, box A's heat is relative to the spot its window also sees.
    expected[1, 20:24, 28:36] = 0.5 if context else 1.0
    expected[1, 0:4, 60:64] = 1.0
    expected[2, 30:34, 40:42] = 1.0
    np.testing.assert_allclose(result.cam.array, expected, atol=1e-5)
    assert result.provenance["cam"].get("context_pixels") == (context or None)


class _RecordsBatchSizes(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.inner(x)


SAME_SIZE_INSIDE = [Region.around((z % 24, 12 + z, 50 - z), (1, 16, 16)) for z in range(30)]
MIXED = [
    *SAME_SIZE_INSIDE[:5],
    Region.around((2, 30, 30), (1, 10, 12)),
    Region((5, 56, 56), (6, 72, 72)),
    Region((6, -4, 20), (7, 12, 36)),
]


@pytest.mark.parametrize("boxes", [SAME_SIZE_INSIDE, MIXED], ids=["one-size-inside", "mixed"])
def test_boxes_classified_in_batches_match_one_at_a_time(model2d, phantom, boxes, monkeypatch):
    ct, _ = phantom
    monkeypatch.setattr(inference, "TARGET_CALL_S", 1e6)  # batches as large as allowed
    recorder = _RecordsBatchSizes(model2d.network)
    model = LoadedModel(model2d.card, recorder, "memory", "")
    batched = run_job(classify_job(ct, model, ClassifyConfig(scope="regions"), boxes))
    assert recorder.sizes == [1, len(boxes) - 1]
    single = run_job(classify_job(ct, model, ClassifyConfig(scope="regions", batch_size=1), boxes))
    assert recorder.sizes[2:] == [1] * len(boxes)
    np.testing.assert_allclose(
        [p.probabilities for p in batched.predictions],
        [p.probabilities for p in single.predictions],
        atol=1e-6,
    )
    assert [p.label for p in batched.predictions] == [p.label for p in single.predictions]


def test_batches_are_sized_from_the_time_per_input(model2d, phantom, monkeypatch):
    """One input first, then as many as fit the target time; a later job starts at that pace."""
    ct, _ = phantom
    recorder = _RecordsBatchSizes(model2d.network)
    model = LoadedModel(model2d.card, recorder, "memory", "")
    monkeypatch.setattr(inference, "TARGET_CALL_S", 1e6)
    for _ in range(2):
        run_job(classify_job(ct, model, ClassifyConfig(scope="slices")))
    assert recorder.sizes == [1, 23, 24]
    recorder.sizes.clear()
    monkeypatch.setattr(inference, "TARGET_CALL_S", 0.0)
    run_job(classify_job(ct, model, ClassifyConfig(scope="slices")))
    assert recorder.sizes == [1] * 24


def test_a_model_loaded_again_keeps_its_pace(model2d, phantom, monkeypatch):
    ct, _ = phantom
    monkeypatch.setattr(inference, "TARGET_CALL_S", 1e6)
    run_job(classify_job(ct, model2d, ClassifyConfig(scope="slices")))
    recorder = _RecordsBatchSizes(model2d.network)
    again = LoadedModel(model2d.card, recorder, model2d.source, model2d.sha256)
    run_job(classify_job(ct, again, ClassifyConfig(scope="slices")))
    assert recorder.sizes == [24]

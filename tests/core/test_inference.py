"""Segmentation inference: masks, world positions, 2D/2.5D, TTA, progress, cancel, OOM."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.phantom import phantom_geometry
from napari_medai.core.segmentation import inference
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.volume import Volume

WINDOW = {"kind": "window", "low": -160, "high": 240}
#: Threshold between 40 and 41 HU in window units, so integer HU never tie.
LEVEL = (40.5 + 160) / 400
STEEPNESS = 40.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_card(**changes) -> ModelCard:
    fields = {
        "name": "tiny",
        "architecture": "UNet",
        "architecture_args": {"channels": [4, 8], "strides": [2]},
        "label_names": {0: "background", 1: "organ"},
        "patch_size": [8, 16, 16],
        "intensity": WINDOW,
        **changes,
    }
    return ModelCard(**fields)


def loaded(card: ModelCard, network: torch.nn.Module, **extra) -> LoadedModel:
    return LoadedModel(card, network.eval(), "test", "0" * 64, **extra)


def threshold_network(dims=3, in_channels=1, pick=0, outputs=2) -> torch.nn.Module:
    """1x1 conv whose class-1 minus class-0 logit is 2*s*(x[pick] - LEVEL)."""
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(in_channels, outputs, 1)
    with torch.no_grad():
        conv.weight.zero_()
        if outputs == 1:
            conv.weight[0, pick] = 2 * STEEPNESS
            conv.bias[:] = torch.tensor([-2 * STEEPNESS * LEVEL])
        else:
            conv.weight[0, pick] = -STEEPNESS
            conv.weight[1, pick] = STEEPNESS
            conv.bias[:] = torch.tensor([STEEPNESS * LEVEL, -STEEPNESS * LEVEL])
    return conv


def hounsfield(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-300, 400, size=shape).astype(np.int16)


def windowed(array: np.ndarray) -> np.ndarray:
    return np.clip((array.astype(np.float64) + 160) / 400, 0, 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2)


class Counting(torch.nn.Module):
    """Counts calls; raises a CUDA out-of-memory error on the first ``failures`` of them."""

    def __init__(self, network: torch.nn.Module, failures: int = 0) -> None:
        super().__init__()
        self.network = network
        self.failures = failures
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)


@pytest.mark.parametrize("shape", [(20, 40, 36), (5, 40, 36)], ids=["windows", "padded-z"])
@pytest.mark.parametrize("outputs", [2, 1], ids=["softmax", "sigmoid"])
def test_threshold_network_gives_the_mask(shape, outputs, monkeypatch):
    monkeypatch.setattr(inference, "SourceGrid", None)  # same space: nothing resampled
    geometry = phantom_geometry(shape, (3.0, 2.0, 2.0))
    array = hounsfield(shape)
    volume = Volume(array.copy(), geometry, {"name": "scan"})
    card = make_card()
    config = SegmentConfig(device="cpu", probabilities=True, uncertainty=True)
    result = run_job(segment_job(volume, loaded(card, threshold_network(outputs=outputs)), config))

    labels = result.labels
    np.testing.assert_array_equal(labels.array, (array > 40).astype(np.uint8))
    assert labels.array.dtype == np.uint8
    assert labels.geometry == geometry and labels.label_names == card.label_names
    expected = sigmoid(2 * STEEPNESS * (windowed(array) - LEVEL))
    assert result.probability.array.dtype == np.float32
    assert result.probability.geometry == geometry
    np.testing.assert_allclose(result.probability.array, expected, atol=1e-5)
    np.testing.assert_allclose(result.uncertainty.array, binary_entropy(expected), atol=1e-4)
    np.testing.assert_array_equal(volume.array, array)  # the input is left alone
    provenance = json.loads(json.dumps(result.provenance))  # JSON-ready for sidecars
    assert provenance["model_space"]["resampled"] is False
    assert provenance["device"] == "cpu" and provenance["fallbacks"] == []
    assert provenance["sha256"] == "0" * 64 and provenance["config"]["overlap"] == 0.25


def test_three_classes_take_the_argmax():
    centres = torch.tensor([0.1, 0.5, 0.9]) + 0.0005  # midpoints fall between integer HU

    class Bands(torch.nn.Module):
        def forward(self, x):
            return -STEEPNESS * (x - centres.view(1, 3, 1, 1, 1)) ** 2

    array = hounsfield((10, 24, 20), seed=1)
    card = make_card(label_names={0: "background", 1: "soft", 2: "dense"})
    config = SegmentConfig(device="cpu", probabilities=True, uncertainty=True)
    result = run_job(segment_job(Volume(array), loaded(card, Bands()), config))
    values = windowed(array)
    distances = np.abs(values[None] - centres.numpy()[:, None, None, None].astype(np.float64))
    np.testing.assert_array_equal(result.labels.array, np.argmin(distances, axis=0))
    logits = -STEEPNESS * distances**2
    softmax = np.exp(logits) / np.exp(logits).sum(axis=0)
    np.testing.assert_allclose(result.probability.array, 1 - softmax[0], atol=1e-5)
    entropy = -(softmax * np.log(softmax)).sum(axis=0) / np.log(3)
    np.testing.assert_allclose(result.uncertainty.array, entropy, atol=1e-4)


def test_labels_land_at_the_right_world_positions():
    shape, spacing = (20, 40, 40), (4.0, 3.0, 3.0)
    geometry = phantom_geometry(shape, spacing)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = geometry.index_to_world(index.reshape(-1, 3)).reshape(*shape, 3)
    blob = (((world - [6.0, -10.0, 14.0]) / [22.0, 30.0, 26.0]) ** 2).sum(-1) <= 1
    volume = Volume(np.where(blob, 200, -100).astype(np.int16), geometry)
    card = make_card(spacing=[2.5, 4.5, 3.5], orientation="RAS")
    result = run_job(segment_job(volume, loaded(card, threshold_network()), SegmentConfig("cpu")))

    labels = result.labels
    assert result.provenance["model_space"]["resampled"] is True
    assert labels.spatial_shape == shape and labels.geometry == geometry
    mask = labels.array == 1
    dice = 2 * (mask & blob).sum() / (mask.sum() + blob.sum())
    assert dice > 0.95
    shift = world[mask].mean(axis=0) - world[blob].mean(axis=0)
    assert np.linalg.norm(shift) < min(spacing)


@pytest.mark.parametrize(
    ("context", "pick", "offset"),
    [(0, 0, 0), (1, 0, -1), (1, 1, 0), (1, 2, 1), (2, 4, 2)],
    ids=["2d", "2.5d-previous", "2.5d-centre", "2.5d-next", "2.5d-two-ahead"],
)
def test_slice_wise_models(context, pick, offset):
    array = hounsfield((7, 20, 24), seed=2)
    card = make_card(
        spatial_dims=2, context_slices=context, in_channels=2 * context + 1, patch_size=[1, 16, 16]
    )
    network = Counting(threshold_network(dims=2, in_channels=2 * context + 1, pick=pick))
    result = run_job(
        segment_job(Volume(array), loaded(card, network), SegmentConfig("cpu", window_batch=4))
    )
    # channel ``pick`` holds slice z + pick - context, the edge slices repeated
    source = np.clip(np.arange(7) + offset, 0, 6)
    np.testing.assert_array_equal(result.labels.array, (array[source] > 40).astype(np.uint8))
    windows = 7 * 2 * 2
    assert network.calls == -(-windows // 4)


def smoothing_network(kernel: torch.Tensor) -> torch.nn.Module:
    """Logits from a 3x3x3 filter of the intensities (zero padded)."""
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight[0, 0] = -STEEPNESS * kernel
        conv.weight[1, 0] = STEEPNESS * kernel
        conv.bias[:] = torch.tensor([STEEPNESS * LEVEL, -STEEPNESS * LEVEL])
    return conv


def test_tta_averages_over_flips():
    array = hounsfield((12, 24, 24), seed=3)
    card = make_card()
    plain = SegmentConfig("cpu", probabilities=True, uncertainty=True)
    tta = SegmentConfig("cpu", tta=True, probabilities=True, uncertainty=True)

    symmetric = Counting(smoothing_network(torch.full((3, 3, 3), 1 / 27)))
    without = run_job(segment_job(Volume(array), loaded(card, symmetric), plain))
    calls = symmetric.calls
    with_tta = run_job(segment_job(Volume(array), loaded(card, symmetric), tta))
    assert symmetric.calls - calls == 8 * calls  # every flip of z, y and x
    # A mean of 27 integer HU is never within 0.5/27 HU of the level: p stays 9e-4 from 0.5.
    np.testing.assert_array_equal(with_tta.labels.array, without.labels.array)
    # Each logit is a float32 sum of 28 terms of up to 40: in any order it errs by at most
    # 28 * 2**-24 * 40 = 7e-5, so p by 3.4e-5 a run (2e-6 seen); a flip not undone moves p 0.5.
    np.testing.assert_allclose(with_tta.probability.array, without.probability.array, atol=1e-4)
    assert with_tta.uncertainty.array.max() < 1e-4  # the flips agree everywhere
    assert without.uncertainty.array.max() > 0.5  # plain entropy near the threshold

    # A filter that looks one slice ahead is not flip-equivariant: TTA must change things.
    ahead = torch.zeros(3, 3, 3)
    ahead[2, 1, 1] = 1.0
    lopsided = loaded(card, smoothing_network(ahead))
    without = run_job(segment_job(Volume(array), lopsided, plain))
    with_tta = run_job(segment_job(Volume(array), lopsided, tta))
    assert np.abs(with_tta.probability.array - without.probability.array).max() > 0.3
    assert with_tta.uncertainty.array.max() > 0.3
    assert np.all((with_tta.uncertainty.array >= 0) & (with_tta.uncertainty.array <= 1))


def test_stitching_matches_monai_sliding_window_inference():
    torch.manual_seed(0)
    card = make_card(intensity={"kind": "none"})
    network = build_network(card).eval()
    array = np.random.default_rng(4).normal(size=(20, 40, 36)).astype(np.float32)
    config = SegmentConfig("cpu", probabilities=True, window_batch=3)
    result = run_job(segment_job(Volume(array), loaded(card, network), config))
    profiles = [compute_importance_map((n,), mode="gaussian") for n in card.patch_size]
    weights = profiles[0][:, None, None] * profiles[1][:, None] * profiles[2]
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(array)[None, None],
            card.patch_size,
            3,
            lambda x: network(x).softmax(1),
            overlap=0.25,
            mode="gaussian",
            roi_weight_map=weights,
        )
    np.testing.assert_allclose(result.probability.array, expected[0, 1].numpy(), atol=1e-5)


def test_progress_increases_to_one():
    card = make_card()
    events = []
    run_job(
        segment_job(
            Volume(hounsfield((20, 40, 36))),
            loaded(card, threshold_network()),
            SegmentConfig("cpu", window_batch=4),
        ),
        events.append,
    )
    fractions = [event.fraction for event in events]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    window_events = [e for e in events if e.message.startswith("window ")]
    assert len(window_events) == -(-27 // 4)  # 3 x 3 x 3 windows, 4 per batch
    assert window_events[-1].message == "window 27/27 on cpu"


def test_cancel_stops_within_a_window_batch_and_cleans_up(monkeypatch):
    released = []
    monkeypatch.setattr(inference, "release_memory", released.append)
    network = Counting(threshold_network())
    job = segment_job(
        Volume(hounsfield((20, 40, 36))), loaded(make_card(), network), SegmentConfig("cpu")
    )
    for event in job:
        if event.message.startswith("window "):
            break
    assert network.calls == 1 and not released
    job.close()
    assert released  # the job's finally ran
    assert network.calls == 1
    with pytest.raises(StopIteration):
        next(job)


def test_out_of_memory_ladder_gives_the_plain_cpu_result():
    torch.manual_seed(0)
    card = make_card(intensity={"kind": "zscore"})
    network = build_network(card).eval()
    volume = Volume(np.random.default_rng(5).normal(size=(20, 40, 36)).astype(np.float32))

    def run(failures: int, batch: int):
        flaky = Counting(network, failures)
        config = SegmentConfig("cpu", probabilities=True, window_batch=batch)
        events = []
        result = run_job(segment_job(volume, loaded(card, flaky), config), events.append)
        return result, [event.message for event in events]

    plain, _ = run(failures=0, batch=4)
    plain_single, _ = run(failures=0, batch=1)
    survived, messages = run(failures=2, batch=4)
    assert survived.provenance["fallbacks"] == [
        "out of memory on cpu: running 2 window(s) at a time instead of 4",
        "out of memory on cpu: running 1 window(s) at a time instead of 2",
    ]
    assert all(message in messages for message in survived.provenance["fallbacks"])
    # The whole run went one window at a time: bit for bit the plain run at that batch size,
    # and the same mask as the plain run with four windows per batch.
    np.testing.assert_array_equal(survived.labels.array, plain_single.labels.array)
    np.testing.assert_array_equal(survived.probability.array, plain_single.probability.array)
    np.testing.assert_array_equal(survived.labels.array, plain.labels.array)
    np.testing.assert_allclose(survived.probability.array, plain.probability.array, atol=1e-5)

    with pytest.raises(MedaiError, match="not enough memory"):
        run(failures=3, batch=4)


def test_out_of_memory_after_the_network_does_not_stitch_a_half_done_batch(monkeypatch):
    volume = Volume(hounsfield((20, 40, 36), seed=7))
    model = loaded(make_card(), threshold_network())
    config = SegmentConfig("cpu", probabilities=True, window_batch=4)
    expected = run_job(segment_job(volume, model, replace(config, window_batch=2)))
    weigh = inference._GaussianMerger.weigh
    failures = iter([True])

    def weigh_or_fail(self, values):
        if next(failures, False):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory while stitching")
        return weigh(self, values)

    monkeypatch.setattr(inference._GaussianMerger, "weigh", weigh_or_fail)
    result = run_job(segment_job(volume, model, config))
    assert result.provenance["fallbacks"] == [
        "out of memory on cpu: running 2 window(s) at a time instead of 4"
    ]
    np.testing.assert_array_equal(result.labels.array, expected.labels.array)
    np.testing.assert_array_equal(result.probability.array, expected.probability.array)


def test_whole_volume_predictor_is_called_once_on_the_normalised_volume():
    array = np.random.default_rng(6).normal(100.0, 30.0, size=(9, 14, 12)).astype(np.float32)
    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        foreground = torch.sigmoid(STEEPNESS * x)
        return torch.cat([1 - foreground, foreground], dim=1)

    card = make_card(intensity={"kind": "zscore"})
    model = loaded(card, threshold_network(), predict_volume=predict)
    volume = Volume(array.copy())
    result = run_job(segment_job(volume, model, SegmentConfig("cpu", tta=True)))
    assert calls == [(1, 1, 9, 14, 12)] * 8
    expected = array > array.mean(dtype=np.float64)
    np.testing.assert_array_equal(result.labels.array, expected.astype(np.uint8))
    np.testing.assert_array_equal(volume.array, array)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_absent_gpu_is_refused_before_any_work():
    model = loaded(make_card(), Counting(threshold_network()))
    with pytest.raises(MedaiError, match="'cuda' was asked for"):
        segment_job(Volume(hounsfield((4, 8, 8))), model, SegmentConfig(device="cuda"))
    assert model.network.calls == 0


@pytest.mark.parametrize(
    ("card_changes", "config", "match"),
    [
        ({}, SegmentConfig("cpu", overlap=1.0), "overlap"),
        ({}, SegmentConfig("cpu", window_batch=0), "window batch"),
        ({"in_channels": 2}, SegmentConfig("cpu"), "takes 2 input channel"),
        ({"spatial_dims": 2, "context_slices": 1, "in_channels": 2}, SegmentConfig("cpu"), "2.5D"),
        ({"label_names": {0: "background"}}, SegmentConfig("cpu"), "no foreground label"),
    ],
)
def test_bad_settings_are_refused(card_changes, config, match):
    model = loaded(make_card(**card_changes), threshold_network())
    with pytest.raises(MedaiError, match=match):
        segment_job(Volume(hounsfield((4, 8, 8))), model, config)


def test_wrong_number_of_outputs_is_reported():
    model = loaded(make_card(), threshold_network(outputs=2))
    model.card.label_names = {0: "background", 1: "a", 2: "b"}
    with pytest.raises(MedaiError, match="gave 2 output channels but its card names 3"):
        run_job(segment_job(Volume(hounsfield((4, 8, 8))), model, SegmentConfig("cpu")))


def test_cpu_runs_one_window_per_call_so_cancel_is_quick():
    """The default batch on the CPU is one window: Cancel acts between calls."""
    network = Counting(threshold_network())
    run_job(
        segment_job(
            Volume(hounsfield((20, 40, 36))), loaded(make_card(), network), SegmentConfig("cpu")
        )
    )
    assert network.calls == 27

"""Segmentation of a big scan holds its outputs plus a slab, not full-size float copies (issue 22).

The scan is mapped into the model's space and the result back onto the scan's grid one z slab
at a time; these tests check that the slabs give what the whole-scan mapping gives, and that the
memory a run allocates is bounded by what it must hold.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.preprocessing import model_space, to_model_space
from napari_medai.core.phantom import phantom_geometry
from napari_medai.core.segmentation import inference
from napari_medai.core.segmentation.config import SegmentConfig
from napari_medai.core.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = {"kind": "window", "low": -160, "high": 240}


def card(spacing: list[float]) -> ModelCard:
    """A two-class card that resamples every scan to ``spacing`` in LPS."""
    return ModelCard(
        name="resampling",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2]},
        label_names={0: "background", 1: "organ"},
        patch_size=[8, 16, 16],
        spacing=spacing,
        orientation="LPS",
        intensity=WINDOW,
    )


def threshold_network() -> torch.nn.Module:
    """1x1 conv: organ where the windowed value is above 0.5 (about 40 HU)."""
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[1, 0] = -20.0, 20.0
        conv.bias[:] = torch.tensor([10.0, -10.0])
    return conv.eval()


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A (z, y, x) rotation matrix about ``axis``."""
    angle = np.deg2rad(degrees)
    plane = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[np.ix_(plane, plane)] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return matrix


def scan(shape: tuple[int, int, int], direction: np.ndarray, seed: int = 0) -> Volume:
    """Random int16 HU on a grid of 2.0 x 1.5 x 1.7 mm with ``direction``."""
    values = np.random.default_rng(seed).integers(-300, 400, size=shape).astype(np.int16)
    return Volume(values, Geometry((2.0, 1.5, 1.7), (4.0, -7.0, 11.0), direction), {"name": "s"})


GRIDS = {
    "oblique about z": phantom_geometry((3, 3, 3), (1.0, 1.0, 1.0)).direction,
    "oblique about x": rotation(2, 25.0),
    "sagittal stack": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
}


@pytest.mark.parametrize("direction", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("spacing", [[3.1, 2.3, 2.9], [1.1, 0.9, 1.3]], ids=["coarser", "finer"])
def test_slabs_map_the_scan_as_the_whole_scan_does(direction, spacing, monkeypatch):
    volume = scan((23, 30, 26), direction)
    model = card(spacing)
    space = model_space(volume, model)
    whole = to_model_space(volume, model, space)
    monkeypatch.setattr(inference, "SLAB_VOXELS", 3 * 30 * 26)  # 3 slices a slab: 8 slabs
    slabbed = inference._to_model_space(volume, model, space)
    # Each model voxel is interpolated from the same source voxels either way; only the rounding
    # of its continuous index (a slab's origin is shifted) differs, by ~1e-12 of a voxel, which
    # moves a value between neighbours at most 700 HU apart by far less than 1e-3 HU.
    np.testing.assert_allclose(slabbed, whole, rtol=0, atol=1e-3)


def test_results_mapped_back_in_slabs_match_one_slab(monkeypatch):
    volume = scan((24, 32, 28), GRIDS["oblique about x"])
    model = LoadedModel(card([3.1, 2.3, 2.9]), threshold_network(), "test", "0" * 64)
    config = SegmentConfig(device="cpu", probabilities=True, uncertainty=True)
    monkeypatch.setattr(inference, "SLAB_VOXELS", 1 << 30)
    whole = run_job(inference.segment_job(volume, model, config))
    monkeypatch.setattr(inference, "SLAB_VOXELS", 2 * 32 * 28)
    slabbed = run_job(inference.segment_job(volume, model, config))
    # Same rounding argument as above: probabilities in [0, 1] agree to float32 precision.
    np.testing.assert_allclose(slabbed.probability.array, whole.probability.array, atol=1e-5)
    np.testing.assert_allclose(slabbed.uncertainty.array, whole.uncertainty.array, atol=1e-4)
    decided = np.abs(whole.probability.array - 0.5) > 1e-4  # not a tie the rounding can flip
    np.testing.assert_array_equal(slabbed.labels.array[decided], whole.labels.array[decided])
    assert slabbed.labels.array.any() and not slabbed.labels.array.all()


def test_segmenting_allocates_its_labels_and_a_slab_not_full_size_floats(monkeypatch):
    shape = (96, 128, 128)
    volume = scan(shape, GRIDS["oblique about z"])
    model = LoadedModel(card([4.0, 3.0, 3.4]), threshold_network(), "test", "0" * 64)
    slab = 4 * shape[1] * shape[2]
    monkeypatch.setattr(inference, "SLAB_VOXELS", slab)
    model_voxels = int(np.prod(model_space(volume, model.card).shape))
    job = inference.segment_job(volume, model, SegmentConfig(device="cpu"))
    tracemalloc.start()
    try:
        result = run_job(job)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What a labels-only run must hold: the uint8 labels (1 byte a voxel of the scan), the scan
    # and the stitched foreground in model space (float32 each), and per slab at most eight
    # float32 temporaries (resampled probabilities, background, their sum, comparisons).
    # tracemalloc counts the bytes numpy asks for, the same on every CPU; torch's tensors are
    # not traced, so the bound is loose only in the run's favour. A full-size float32 copy of
    # the scan's grid alone (4 bytes a voxel) plus the labels would exceed it.
    voxels = int(np.prod(shape))
    must_hold = voxels + 2 * 4 * model_voxels + 8 * 4 * slab
    assert peak <= must_hold, f"peak {peak / 2**20:.1f} MiB > {must_hold / 2**20:.1f} MiB"
    assert result.labels.array.dtype == np.uint8 and result.labels.array.any()


def test_windows_are_stitched_in_a_buffer_one_window_deep(monkeypatch):
    held = []

    class Recording(inference._GaussianMerger):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            held.append(tuple(self.values.shape))

    monkeypatch.setattr(inference, "_GaussianMerger", Recording)
    same_grid = replace(card([1.0, 1.0, 1.0]), spacing=None, orientation=None)
    volume = scan((40, 32, 28), GRIDS["oblique about z"])
    model = LoadedModel(same_grid, threshold_network(), "test", "0" * 64)
    config = SegmentConfig(device="cpu", probabilities=True, window_batch=3)
    result = run_job(inference.segment_job(volume, model, config))
    # The scan is 40 slices deep, the window 8: only the window's depth of planes is held.
    assert held == [(1, 8, 32, 28)]
    decided = volume.array != 40  # 40 HU is the network's tie
    np.testing.assert_array_equal(result.labels.array[decided], (volume.array > 40)[decided])

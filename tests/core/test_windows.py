"""CT window presets and cheap display limits (no Qt, no napari)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.volume import Volume
from napari_medai.core.windows import (
    PRESETS,
    display_defaults,
    percentile_limits,
    subsample,
    value_range,
)

#: (level, width) in HU as radiology references list them.
STANDARD_WINDOWS = {
    "soft tissue": (40, 400),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "brain": (40, 80),
    "liver": (60, 160),
}


class RecordingArray:
    """An array-like that records how many voxels were read through it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.voxels_read = 0

    def __getitem__(self, key):
        out = self.array[key]
        self.voxels_read += out.size
        return out


@pytest.mark.parametrize("name", sorted(STANDARD_WINDOWS))
def test_preset_limits_are_level_plus_minus_half_width(name):
    level, width = STANDARD_WINDOWS[name]
    preset = PRESETS[name]
    assert (preset.level, preset.width) == (level, width)
    low, high = preset.contrast_limits
    assert high - low == pytest.approx(width)
    assert (low + high) / 2 == pytest.approx(level)


def test_presets_are_exactly_the_standard_set():
    assert set(PRESETS) == set(STANDARD_WINDOWS)


@pytest.mark.parametrize(
    "shape", [(7, 300, 500), (1, 3000, 2000), (5_000_000,), (2, 3, 40, 50, 60)]
)
def test_subsample_reads_at_most_max_samples(shape):
    rng = np.random.default_rng(0)
    data = RecordingArray(rng.standard_normal(shape, dtype=np.float32))
    values = subsample(data, max_samples=100_000)
    assert 0 < values.size <= 100_000
    assert data.voxels_read <= 100_000
    # Enough of the budget is used to estimate limits well.
    assert values.size >= 100_000 / 2 ** len(shape)


def test_subsample_keeps_small_arrays_whole_and_drops_non_finite():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data[0, 0, 0] = np.nan
    data[1, 2, 3] = np.inf
    values = subsample(data)
    assert sorted(values) == sorted(data[np.isfinite(data)].tolist())


def test_percentile_limits_match_full_percentiles_on_a_big_volume():
    rng = np.random.default_rng(1)
    data = rng.normal(100.0, 50.0, size=(40, 256, 256)).astype(np.float32)
    truth = np.percentile(data, [0.5, 99.5])
    low, high = percentile_limits(data, max_samples=200_000)
    # The estimate from 200k samples is within 0.1 sigma of the full-data value.
    assert low == pytest.approx(truth[0], abs=5.0)
    assert high == pytest.approx(truth[1], abs=5.0)


def test_percentile_limits_ignore_nan():
    rng = np.random.default_rng(2)
    data = rng.uniform(-5, 5, size=(10, 20, 20))
    data[::3] = np.nan
    assert percentile_limits(data, 1, 99) == pytest.approx(tuple(np.nanpercentile(data, [1, 99])))


@pytest.mark.parametrize("value", [0.0, 7.0, -3.0])
def test_constant_data_still_gets_increasing_limits(value):
    data = np.full((3, 4, 5), value)
    for low, high in (percentile_limits(data), value_range(data)):
        assert low < high
        assert low <= value <= high


def test_value_range_is_min_max_for_small_arrays():
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 3000, size=(6, 30, 30)).astype(np.int16)
    assert value_range(data) == (float(data.min()), float(data.max()))


def test_ct_gets_the_soft_tissue_window_whatever_its_values(phantom):
    ct, _labels = phantom
    assert ct.modality == "CT"
    shifted = ct.with_array((ct.array + 2000).astype(np.int16))
    for volume in (ct, shifted):
        defaults = display_defaults(volume)
        assert defaults["contrast_limits"] == (-160.0, 240.0)
        assert defaults["colormap"] == "gray"


@pytest.mark.parametrize("modality", ["MR", ""])
def test_mr_and_unknown_get_percentile_limits(modality):
    rng = np.random.default_rng(4)
    array = rng.gamma(2.0, 150.0, size=(8, 40, 40)).astype(np.float32)
    volume = Volume(array, metadata={"modality": modality})
    defaults = display_defaults(volume)
    assert defaults["contrast_limits"] == pytest.approx(tuple(np.percentile(array, [0.5, 99.5])))
    assert defaults["colormap"] == "gray"

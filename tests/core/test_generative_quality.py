"""The GAN quality measures tell same from different distributions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.generative.quality import (
    histogram_distance,
    mmd2,
    ms_ssim_diversity,
    two_sample_accuracy_job,
)
from napari_medai.core.jobs import run_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, seed: int, brightness: float = 0.5) -> np.ndarray:
    """Smooth random patches: a bright disc at a random place on a dim background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    centres = rng.uniform(8, 24, size=(n, 2))
    discs = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2 < 36
    return (0.2 + brightness * discs + rng.normal(0, 0.02, (n, 32, 32))).clip(0, 1)


def test_mmd_is_near_zero_for_one_distribution_and_larger_otherwise():
    real, same, shuffled = blobs(64, 0), blobs(64, 1), blobs(64, 2)
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(p.ravel()).reshape(p.shape) for p in shuffled])
    assert abs(mmd2(same, real)) < 0.02
    assert mmd2(shuffled, real) > 5 * max(abs(mmd2(same, real)), 1e-3)


def test_histogram_distance_and_diversity():
    real = blobs(32, 0)
    assert histogram_distance(real, real) == 0.0
    same = histogram_distance(blobs(32, 1), real)
    assert histogram_distance(blobs(32, 1, brightness=0.0), real) > 3 * same
    collapsed = np.repeat(real[:1], 32, axis=0)
    assert ms_ssim_diversity(collapsed) > 0.99
    assert ms_ssim_diversity(real) < 0.9


def test_two_sample_accuracy_separates_different_sets_only():
    real = blobs(64, 0)
    different = run_job(two_sample_accuracy_job(real, blobs(64, 1, brightness=0.0), steps=40))
    same = run_job(two_sample_accuracy_job(real, blobs(64, 1), steps=40))
    assert different > 0.9
    assert same < 0.75

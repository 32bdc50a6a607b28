"""The GAN quality measures tell same from different distributions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.generative.quality import (
    histogram_distance,
    mmd2,
    ms_ssim_diversity,
    quality_job,
    two_sample_accuracy_job,
    verdict,
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


def test_a_generator_missing_the_structure_is_not_yet_useful_and_a_real_draw_is():
    """The verdict read from the measures themselves, not from hand-set figures."""
    real = blobs(64, 0)
    bad = run_job(quality_job(real, blobs(64, 1, brightness=0.0), steps=40))
    good = run_job(quality_job(real, blobs(64, 1), steps=40))
    # Patches without the disc are about 3x further from the real ones than noise
    # (MMD² 0.16 against 0.057), and a second real draw is near 0 against 0.057:
    # margins no CPU's summation order can cross.
    assert bad["verdict"].startswith("Not yet useful: ")
    assert "no closer to real patches than noise" in bad["verdict"]
    assert bad["verdict"].endswith("train longer.")
    assert good["mmd2"] < min(good["mmd2_noise"], good["mmd2_shuffled"])
    assert not good["verdict"].startswith("Not yet useful"), good["verdict"]


@pytest.mark.parametrize(
    ("accuracy", "mmd", "says"),
    [
        (1.0, 0.01, "Not yet useful: a classifier tells its samples from real patches 100%"),
        (0.6, 0.07, "Not yet useful: its samples are no closer to real patches than noise is"),
        (0.95, 0.07, "95% of the time (50% would mean it cannot) and its samples are no closer"),
        (0.6, 0.01, "Closer to real patches than noise (MMD² 0.0100, noise 0.0590)"),
    ],
)
def test_verdict_names_each_reason(accuracy, mmd, says):
    report = {
        "two_sample_accuracy": accuracy,
        "mmd2": mmd,
        "mmd2_noise": 0.059,
        "mmd2_shuffled": 0.06,
    }
    assert says in verdict(report)


def test_the_two_sample_test_reports_its_real_against_real_control():
    """A fair test scores about chance on two real draws while telling a different set apart."""
    real = blobs(64, 0)
    report = run_job(
        quality_job(real, blobs(64, 1, brightness=0.0), steps=40, control=blobs(64, 2))
    )
    assert report["two_sample_accuracy"] > 0.9
    # Chance is 0.5 with a standard deviation of 0.0625 on 64 test patches; 0.75 is four of them.
    assert report["two_sample_accuracy_real_vs_real"] < 0.75

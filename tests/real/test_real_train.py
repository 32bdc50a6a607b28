"""Learn the liver of a real CT from three painted axial slices (issue 4 acceptance).

The time goal (Dice >= 0.90 within 20 s of CPU training) is measured by
``bench/train_sparse.py``; CI machines may be loaded, so this test gives the
engine the number of iterations the bench reached in about 20 s and asserts the
Dice goal on the 27 slices nobody painted.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.training.trainer import TrainConfig, train_job
from napari_medai.core.volume import LabelMap

LIVER = 5
#: Iterations the bench's 20 s run reached (see the note in the issue).
ITERATIONS_IN_20_S = 150

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_three_painted_slices_segment_the_liver(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    liver = read_label_map(folder / "example_seg.nii.gz", reference=ct).array == LIVER
    extent = np.flatnonzero(liver.any(axis=(1, 2)))
    painted = sorted(
        {int(round(extent[0] + f * (extent[-1] - extent[0]))) for f in (0.25, 0.5, 0.75)}
    )
    sparse = np.zeros(liver.shape, dtype=np.uint8)
    sparse[painted] = np.where(liver[painted], LIVER, 0)
    labels = LabelMap(sparse, ct.geometry, {}, {LIVER: "liver"})

    config = TrainConfig(
        out_dir=tmp_path / "liver",
        max_time_s=None,
        max_iters=ITERATIONS_IN_20_S,
        seed=0,
        device="cpu",
    )
    result = run_job(train_job([(ct, labels)], config))
    assert result.card.training["dimensionality"] == "2.5d"
    assert result.card.label_names == {0: "background", LIVER: "liver"}

    segmented = run_job(segment_job(ct, load_model(result.best_path), SegmentConfig(device="cpu")))
    others = [z for z in range(ct.spatial_shape[0]) if z not in painted]
    assert len(others) == 27
    predicted, truth = segmented.labels.array[others] == LIVER, liver[others]
    dice = 2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    # Seeds 0-4 gave 0.931-0.936 (threads auto or 2): 0.03 above the bound, 6x that spread.
    assert dice >= 0.90

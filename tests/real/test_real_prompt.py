"""The prompt engine on a real CT kidney (TotalSegmentator's example; label 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_medai.core.io.reading import read_volume
from napari_medai.core.prompt.engine import engine_named
from napari_medai.core.prompt.prompts import Box, Point, Prompts

pytestmark = pytest.mark.real


def test_box_and_four_clicks_segment_the_real_kidney(optional_shared_data):
    if optional_shared_data is None:
        pytest.skip("no ../shared/data: the real CT is not here")
    folder = optional_shared_data / "totalsegmentator"
    volume = read_volume(folder / "example_ct_sm.nii.gz")
    truth = read_volume(folder / "example_seg.nii.gz").array == 3
    spacing = np.asarray(volume.geometry.spacing)
    inside = np.argwhere(truth)
    low, high = inside.min(axis=0), inside.max(axis=0)
    pad = np.round((high - low + 1) * 0.1).astype(int)
    top = np.asarray(truth.shape) - 1
    prompts = Prompts((Box(tuple(np.maximum(low - pad, 0)), tuple(np.minimum(high + pad, top))),))
    session = engine_named().start(volume)
    mask = session.update(prompts)
    for _ in range(4):
        best = (0, None, True)
        for region, positive in ((truth & ~mask, True), (mask & ~truth, False)):
            labels, count = ndi.label(region)
            sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(1, int)
            if sizes.max() > best[0]:
                best = (sizes.max(), labels == sizes.argmax() + 1, positive)
        _, largest, positive = best
        depth = ndi.distance_transform_edt(np.pad(largest, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        click = tuple(int(v) for v in np.unravel_index(depth.argmax(), depth.shape))
        prompts = prompts.plus(Point(click, positive))
        mask = session.update(prompts)
    dice = 2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum())
    # bench/prompt.py measured 0.878 after four clicks (0.806 for the box alone); the bound
    # is the 0.85 goal for a box and four clicks.
    assert dice >= 0.85

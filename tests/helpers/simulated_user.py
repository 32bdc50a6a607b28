"""The simulated user of the prompt tests and bench/prompt.py: where the next click goes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_medai.core.prompt.prompts import Point


def corrective_click(truth: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> Point:
    """A click deepest inside the largest error region: positive if missed, else negative."""
    best = None
    for region, positive in ((truth & ~mask, True), (mask & ~truth, False)):
        labels, count = ndi.label(region)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            if best is None or sizes.max() > best[0]:
                best = (sizes.max(), labels == sizes.argmax() + 1, positive)
    depth = ndi.distance_transform_edt(np.pad(best[1], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return Point(tuple(int(v) for v in np.unravel_index(depth.argmax(), depth.shape)), best[2])

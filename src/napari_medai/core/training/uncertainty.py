"""What to annotate next: slices ranked by the model's uncertainty."""

from __future__ import annotations

import numpy as np


def rank_slices_by_uncertainty(uncertainty: np.ndarray, axis: int = 0) -> list[int]:
    """Slice indices along ``axis``, most uncertain first.

    A slice's score is the MEAN per-voxel uncertainty over the slice (every
    slice along an axis has the same size, so mean and sum rank alike; the
    mean is what a user can compare across scans). NaN voxels are ignored;
    ties keep the lower index first.
    """
    values = np.asarray(uncertainty)
    if values.ndim != 3:
        raise ValueError(f"uncertainty must be (z, y, x), got shape {values.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, not {axis}")
    # One slice at a time: a whole-volume float64 copy of a CT-sized map is GBs.
    scores = np.full(values.shape[axis], -np.inf)
    for index in range(values.shape[axis]):
        plane = np.take(values, index, axis=axis)
        finite = np.isfinite(plane)
        if finite.any():
            scores[index] = plane[finite].mean(dtype=np.float64)
    return [int(i) for i in np.argsort(-scores, kind="stable")]

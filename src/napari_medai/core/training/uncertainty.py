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
    values = np.asarray(uncertainty, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"uncertainty must be (z, y, x), got shape {values.shape}")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, not {axis}")
    others = tuple(a for a in range(3) if a != axis % 3)
    finite = np.isfinite(values)
    totals = np.where(finite, values, 0.0).sum(axis=others)
    counts = finite.sum(axis=others)
    scores = np.divide(totals, counts, out=np.full(totals.shape, -np.inf), where=counts > 0)
    return [int(i) for i in np.argsort(-scores, kind="stable")]

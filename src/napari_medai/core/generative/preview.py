"""Augmented copies of one slice, as segmentation training would see it, as a worker job.

The Generate dock shows them beside the scan; the augmentation itself is
:func:`napari_medai.core.training.dataset.preview_augmentations` (torch and
MONAI), which is why this runs in the worker.
"""

from __future__ import annotations

import numpy as np

from napari_medai.core.jobs import Job, Progress
from napari_medai.core.training.dataset import preview_augmentations
from napari_medai.core.training.strengths import AugmentStrengths


def augmentation_preview_job(
    image: np.ndarray, strengths: AugmentStrengths, count: int = 8
) -> Job[np.ndarray]:
    """``count`` augmented copies (n, y, x) of the 2D slice ``image``, in its own units."""
    yield Progress(0.0, "augmenting the slice")
    return preview_augmentations(image, strengths, count)

"""The prediction that starts a review round: segment with uncertainty, rank slices to check.

Light to import (torch comes in with the model), so it can run in the worker
process that trained the model, where torch is already loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_medai.core.jobs import Job
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult
from napari_medai.core.segmentation.jobs import load_and_segment_job
from napari_medai.core.training.annotations import painted_planes
from napari_medai.core.training.uncertainty import rank_slices_by_uncertainty
from napari_medai.core.volume import Volume


def predict_for_review_job(
    model: Path, volume: Volume, annotation: np.ndarray
) -> Job[tuple[SegmentResult, list[int]]]:
    """Segment ``volume`` with uncertainty; rank the axial slices still to annotate.

    The ranking holds every axial slice the user has not painted in
    ``annotation`` (read only), most uncertain first.
    """
    _model, result = yield from load_and_segment_job(
        str(model), False, volume, SegmentConfig(uncertainty=True)
    )
    painted = painted_planes(annotation)[0]
    ranking = rank_slices_by_uncertainty(result.uncertainty.array)
    return result, [z for z in ranking if not painted[z]]

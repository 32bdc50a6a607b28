"""Overlap and surface metrics of a predicted label map against a reference, in mm.

Per label: Dice, IoU, the 95th percentile Hausdorff distance, the average
symmetric surface distance and the surface Dice at a tolerance. Dice and IoU are
counted with numpy (the formulas of MONAI's ``compute_dice`` / ``compute_iou``,
which a test checks; MONAI converts the masks to float tensors first and took
half the time of a 512x512x300 evaluation). The three surface metrics come from one pair of
MONAI surface-distance maps per label (``get_mask_edges`` then
``get_surface_distance`` each way), combined exactly as MONAI's
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance
(symmetric=True)`` and ``compute_surface_dice`` do (a test checks they agree):
calling those three would compute the same distance transforms three times.
Each label is cropped to its bounding box plus a margin first, which is what
makes a 512x512x300 pair fast. A prediction on another grid in the same world
space is resampled onto the reference grid (nearest neighbour).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_medai.core.jobs import Job, Progress
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap

#: Background voxels kept around each label's box, so edges at its border are real edges.
_MARGIN = 2


@dataclass(frozen=True)
class EvaluationConfig:
    """``tolerance_mm``: surface Dice counts surface points closer than this."""

    tolerance_mm: float = 2.0


@dataclass(frozen=True)
class LabelScores:
    """Scores of one label; distances in mm, None when a mask is empty (undefined)."""

    value: int
    name: str
    dice: float
    iou: float
    hd95_mm: float | None
    assd_mm: float | None
    surface_dice: float | None
    reference_voxels: int
    predicted_voxels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass
class EvaluationResult:
    """Scores per label, the tolerance used and what was done to the inputs."""

    labels: list[LabelScores]
    tolerance_mm: float
    spacing_mm: list[float]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the CLI's output)."""
        return {
            "tolerance_mm": self.tolerance_mm,
            "spacing_mm_zyx": self.spacing_mm,
            "warnings": self.warnings,
            "labels": [scores.to_dict() for scores in self.labels],
        }


def evaluate_job(
    prediction: LabelMap, reference: LabelMap, config: EvaluationConfig | None = None
) -> Job[EvaluationResult]:
    """Score every label found in either map; yields progress per label."""
    from scipy.ndimage import find_objects

    config = config or EvaluationConfig()
    warnings = []
    same_grid = prediction.spatial_shape == reference.spatial_shape and (
        prediction.geometry.is_close(reference.geometry, 1e-4)
    )
    if not same_grid:
        yield Progress(0.0, "resampling the prediction onto the reference grid")
        prediction = resample_label_map(prediction, reference.geometry, reference.spatial_shape)
        warnings.append(
            "the prediction was on another grid; it was resampled onto the reference grid "
            "(nearest neighbour)"
        )
    pred, ref = prediction.array, reference.array
    yield Progress(0.05, "finding the labels")
    boxes_pred, boxes_ref = find_objects(pred), find_objects(ref)
    values = sorted(
        {v + 1 for v, box in enumerate(boxes_pred) if box}
        | {v + 1 for v, box in enumerate(boxes_ref) if box}
    )
    names = {**prediction.label_names, **reference.label_names}
    spacing = [float(s) for s in reference.geometry.spacing]
    scores = []
    for number, value in enumerate(values):
        box = _union_box(_box_at(boxes_pred, value), _box_at(boxes_ref, value), ref.shape)
        scores.append(_score(pred[box] == value, ref[box] == value, value, names, spacing, config))
        yield Progress(0.05 + 0.95 * (number + 1) / len(values), f"scored label {value}")
    if not values:
        warnings.append("both label maps are empty: nothing to score")
    return EvaluationResult(scores, config.tolerance_mm, spacing, warnings)


def _box_at(boxes: list, value: int) -> tuple[slice, ...] | None:
    return boxes[value - 1] if value - 1 < len(boxes) else None


def _union_box(a: tuple | None, b: tuple | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The union of two boxes, grown by the margin and clipped to the array."""
    boxes = [box for box in (a, b) if box is not None]
    return tuple(
        slice(
            max(min(box[axis].start for box in boxes) - _MARGIN, 0),
            min(max(box[axis].stop for box in boxes) + _MARGIN, shape[axis]),
        )
        for axis in range(len(shape))
    )


def _score(
    pred: np.ndarray,
    ref: np.ndarray,
    value: int,
    names: dict[int, str],
    spacing: list[float],
    config: EvaluationConfig,
) -> LabelScores:
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    both_count = int(np.count_nonzero(pred & ref))
    pred_count, ref_count = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    union = pred_count + ref_count - both_count
    dice = 2 * both_count / (pred_count + ref_count) if union else 1.0
    iou = both_count / union if union else 1.0
    hd95 = assd = surface_dice = None
    if pred.any() and ref.any():
        edges_pred, edges_ref = get_mask_edges(pred, ref, crop=False)
        to_ref = np.asarray(get_surface_distance(edges_pred, edges_ref, spacing=spacing))
        to_pred = np.asarray(get_surface_distance(edges_ref, edges_pred, spacing=spacing))
        hd95 = max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
        both = np.concatenate([to_ref, to_pred])
        assd = float(both.mean())
        surface_dice = float(np.count_nonzero(both <= config.tolerance_mm) / both.size)
    return LabelScores(
        value=value,
        name=names.get(value, str(value)),
        dice=dice,
        iou=iou,
        hd95_mm=hd95,
        assd_mm=assd,
        surface_dice=surface_dice,
        reference_voxels=ref_count,
        predicted_voxels=pred_count,
    )

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
makes a 512x512x300 pair fast; boxes are found over the values present, so a
huge label value costs nothing extra.

Labels are paired by name when both maps name them, else by value
(:mod:`.matching`); the result says which and lists what was left out. A
prediction on another grid in the same world space is resampled onto the
reference grid (nearest neighbour); one whose grid lies wholly outside the
reference's, a 2D map against a 3D one, and negative labels are refused. A
single-slice pair is scored in 2D.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.evaluation.matching import LabelMatching, LabelPair, match_labels
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap

#: Background voxels kept around each label's box, so edges at its border are real edges.
_MARGIN = 2
#: Largest label value whose boxes scipy's ``find_objects`` may list directly: it keeps one
#: slot per value up to the maximum, so a value of 2**31 - 1 would need 2 billion of them.
_DIRECT_BOXES_MAX = 1 << 16

Box = tuple[slice, ...]


class EvaluationError(MedaiError):
    """Two label maps, or the settings, cannot be scored against each other."""


@dataclass(frozen=True)
class EvaluationConfig:
    """``tolerance_mm``: surface Dice counts surface points closer than this (finite, > 0)."""

    tolerance_mm: float = 2.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.tolerance_mm) or self.tolerance_mm <= 0:
            raise EvaluationError(
                f"the surface Dice tolerance must be a distance above 0 mm (e.g. 2), "
                f"got {self.tolerance_mm}"
            )


@dataclass(frozen=True)
class LabelScores:
    """Scores of one matched pair; distances in mm, None when undefined (``note`` says why).

    ``value`` is the label's value in the reference, ``predicted_value`` in the prediction
    (they differ when labels were matched by name).
    """

    value: int
    predicted_value: int
    name: str
    dice: float
    iou: float
    hd95_mm: float | None
    assd_mm: float | None
    surface_dice: float | None
    reference_voxels: int
    predicted_voxels: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass
class EvaluationResult:
    """Scores per label, how labels were matched, the tolerance and what was done to the inputs."""

    labels: list[LabelScores]
    tolerance_mm: float
    spacing_mm: list[float]
    warnings: list[str]
    matching: LabelMatching

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the CLI's output); undefined metrics are null, never NaN."""
        return {
            "tolerance_mm": self.tolerance_mm,
            "spacing_mm_zyx": self.spacing_mm,
            "warnings": self.warnings,
            **self.matching.to_dict(),
            "labels": [scores.to_dict() for scores in self.labels],
        }


def evaluate_job(
    prediction: LabelMap, reference: LabelMap, config: EvaluationConfig | None = None
) -> Job[EvaluationResult]:
    """Score every matched label pair (see :mod:`.matching`); yields progress per pair.

    Refuses negative labels, a 2D map against a 3D one and grids that do not overlap.
    """
    config = config or EvaluationConfig()
    for role, label_map in (("prediction", prediction), ("reference", reference)):
        _check_no_negative_labels(label_map, role)
    _check_same_dimensionality(prediction, reference)
    warnings = []
    if not _same_grid(prediction, reference):
        _check_grids_overlap(prediction, reference)
        yield Progress(0.0, "resampling the prediction onto the reference grid")
        warnings.append(_resampled_warning(prediction, reference))
        prediction = resample_label_map(prediction, reference.geometry, reference.spatial_shape)
    yield Progress(0.05, "finding the labels")
    pred, ref, spacing = _as_scored(prediction.array, reference.array, reference.geometry.spacing)
    boxes_pred, boxes_ref = label_boxes(pred), label_boxes(ref)
    matching = match_labels(boxes_pred, boxes_ref, prediction.label_names, reference.label_names)
    warnings.extend(matching.warnings())
    scores = []
    for number, pair in enumerate(matching.pairs):
        box = _union_box(
            boxes_pred.get(pair.predicted_value), boxes_ref.get(pair.reference_value), ref.shape
        )
        masks = pred[box] == pair.predicted_value, ref[box] == pair.reference_value
        scores.append(_score(*masks, pair, spacing, config))
        yield Progress(0.05 + 0.95 * (number + 1) / len(matching.pairs), f"scored {pair.name}")
    if not boxes_pred and not boxes_ref:
        warnings.append("both label maps are empty: nothing to score")
    elif not matching.pairs:
        warnings.append("no label of the prediction matches one of the reference: nothing scored")
    spacing_zyx = [float(s) for s in reference.geometry.spacing]
    return EvaluationResult(scores, config.tolerance_mm, spacing_zyx, warnings, matching)


def label_boxes(array: np.ndarray) -> dict[int, Box]:
    """Each foreground value present in ``array`` and its bounding box.

    Works on the values present, so a label value of 2**31 - 1 costs no more than 1.
    """
    from scipy.ndimage import find_objects

    if array.size == 0:
        return {}
    if int(array.max()) <= _DIRECT_BOXES_MAX:
        return {v + 1: box for v, box in enumerate(find_objects(array)) if box is not None}
    values, dense = np.unique(array, return_inverse=True)
    dense = dense.reshape(array.shape) + (0 if values[0] == 0 else 1)
    foreground = values[values != 0]
    return {int(v): box for v, box in zip(foreground, find_objects(dense), strict=True)}


def _check_no_negative_labels(label_map: LabelMap, role: str) -> None:
    """Refuse negative values: they are no label (background is 0) and would be scored as none."""
    array = label_map.array
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise EvaluationError(
            f"the {_described(label_map, role)} holds negative label values (lowest "
            f"{int(array.min())}): labels are 0 for background and positive numbers; "
            "relabel it before evaluating"
        )


def _described(label_map: LabelMap, role: str) -> str:
    """ "prediction (liver.nii.gz)", or just the role when the map has no file name."""
    name = label_map.metadata.get("source") or label_map.metadata.get("name")
    return f"{role} ({name})" if name else role


def _check_same_dimensionality(prediction: LabelMap, reference: LabelMap) -> None:
    """Refuse a single-slice (2D) map against a volume: the missing slices would score as misses."""
    flat_pred, flat_ref = _is_2d(prediction.spatial_shape), _is_2d(reference.spatial_shape)
    if flat_pred != flat_ref:
        raise EvaluationError(
            f"the prediction is a {'2D' if flat_pred else '3D'} map "
            f"({_shape(prediction.spatial_shape)} voxels) and the reference a "
            f"{'2D' if flat_ref else '3D'} one ({_shape(reference.spatial_shape)}): "
            "score a slice against a slice or a volume against a volume"
        )


def _is_2d(shape: tuple[int, ...]) -> bool:
    return sum(size == 1 for size in shape) == 1


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def _same_grid(prediction: LabelMap, reference: LabelMap) -> bool:
    return prediction.spatial_shape == reference.spatial_shape and (
        prediction.geometry.is_close(reference.geometry, 1e-4)
    )


def _check_grids_overlap(prediction: LabelMap, reference: LabelMap) -> None:
    """Refuse a prediction whose grid lies wholly outside the reference's (another scan)."""
    low, high = _extent_in(reference, prediction)
    inside = np.all(high > -0.5) and np.all(low < np.array(reference.spatial_shape) - 0.5)
    if not inside:
        apart = np.linalg.norm(_centre(prediction) - _centre(reference))
        raise GeometryError(
            "the prediction's grid does not overlap the reference's: their centres are "
            f"{apart:.0f} mm apart. Were both drawn on the same scan?"
        )


def _extent_in(reference: LabelMap, other: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """The box, in the reference's voxel indices, that ``other``'s voxels cover (outer edges)."""
    corners = np.array(
        [
            [(-0.5 if bit == "0" else size - 0.5) for bit, size in zip(bits, other.spatial_shape)]
            for bits in (f"{n:03b}" for n in range(8))
        ]
    )
    world = other.geometry.index_to_world(corners)
    matrix = reference.geometry.direction @ np.diag(reference.geometry.spacing)
    index = np.linalg.solve(matrix, (world - reference.geometry.origin).T).T
    return index.min(axis=0), index.max(axis=0)


def _centre(label_map: LabelMap) -> np.ndarray:
    middle = (np.array(label_map.spatial_shape) - 1) / 2
    return label_map.geometry.index_to_world(middle)[0]


def _resampled_warning(prediction: LabelMap, reference: LabelMap) -> str:
    """What differed between the grids, for the "resampled" warning."""
    spacing = "x".join(f"{s:g}" for s in prediction.geometry.spacing)
    apart = np.linalg.norm(_centre(prediction) - _centre(reference))
    return (
        f"the prediction was on another grid ({_shape(prediction.spatial_shape)} voxels of "
        f"{spacing} mm, centre {apart:.1f} mm from the reference's); it was resampled onto "
        "the reference grid (nearest neighbour)"
    )


def _as_scored(
    pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Both arrays and the spacing, a single-slice grid as 2D so its surfaces are its contours.

    In 3D every voxel of a one-slice mask would be a surface voxel (nothing lies above it).
    """
    spacing_list = [float(s) for s in spacing]
    if not _is_2d(ref.shape):
        return pred, ref, spacing_list
    axis = ref.shape.index(1)
    del spacing_list[axis]
    return pred.squeeze(axis), ref.squeeze(axis), spacing_list


def _union_box(a: Box | None, b: Box | None, shape: tuple[int, ...]) -> Box:
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
    pair: LabelPair,
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
    if pred_count and ref_count:
        edges_pred, edges_ref = get_mask_edges(pred, ref, crop=False)
        to_ref = np.asarray(get_surface_distance(edges_pred, edges_ref, spacing=spacing))
        to_pred = np.asarray(get_surface_distance(edges_ref, edges_pred, spacing=spacing))
        hd95 = max(float(np.percentile(to_ref, 95)), float(np.percentile(to_pred, 95)))
        both = np.concatenate([to_ref, to_pred])
        assd = float(both.mean())
        surface_dice = float(np.count_nonzero(both <= config.tolerance_mm) / both.size)
    return LabelScores(
        value=pair.reference_value,
        predicted_value=pair.predicted_value,
        name=pair.name,
        dice=dice,
        iou=iou,
        hd95_mm=hd95,
        assd_mm=assd,
        surface_dice=surface_dice,
        reference_voxels=ref_count,
        predicted_voxels=pred_count,
        note=_undefined_note(pred_count, ref_count),
    )


def _undefined_note(pred_count: int, ref_count: int) -> str:
    """Why the surface metrics are null ("" when they are defined)."""
    if pred_count and ref_count:
        return ""
    empty = "prediction" if not pred_count else "reference"
    return f"the {empty} has no voxel of this label: surface distances are undefined (null)"

"""Fill between slices: a label painted on a few slices, interpolated through the ones between.

Shape-based interpolation (Raya and Udupa 1990; Herman et al. 1992): each painted slice
becomes a signed distance map in mm (in-plane spacing), maps of two consecutive painted
slices are blended linearly for the slices between, and the blend's inside is filled.
Hand-written because SimpleITK has no ``MorphologicalContourInterpolator`` (that is in ITK's
remote modules, not installed here); scipy's exact distance transform does the work.
Only unlabelled voxels are filled, so no painted voxel of any label changes, and nothing is
extrapolated beyond the first and last painted slice of a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_medai.core.prompt.prompts import PromptError


@dataclass(frozen=True)
class FillResult:
    """The filled labels, the axis filled along, and slices filled per label value."""

    labels: np.ndarray
    axis: int | None
    filled: dict[int, int]

    def summary(self) -> str:
        """One line for a status bar."""
        if not self.filled:
            return "nothing to fill: no label has unpainted slices between painted ones"
        counts = ", ".join(f"label {k}: {n} slices" for k, n in sorted(self.filled.items()))
        return f"filled along axis {self.axis} ({counts})"


def fill_between_slices(
    labels: np.ndarray, spacing: Sequence[float], axis: int | None = None
) -> FillResult:
    """Fill every label between the slices it was painted on; ``labels`` is left unchanged.

    ``axis`` is the axis the slices are taken across (0 = z); ``None`` picks the axis along
    which the painted slices leave the most gaps (the one the user painted on).
    """
    if labels.ndim != 3:
        raise PromptError(f"fill between slices needs a 3D label map, got shape {labels.shape}")
    values = [int(v) for v in np.unique(labels) if v != 0]
    axis = _painted_axis(labels, values) if axis is None else axis
    if axis not in (0, 1, 2):
        raise PromptError(f"fill between slices goes along axis 0, 1 or 2, not {axis}")
    filled_labels = labels.copy()
    filled: dict[int, int] = {}
    plane_spacing = [float(s) for i, s in enumerate(spacing) if i != axis]
    moved = np.moveaxis(filled_labels, axis, 0)  # a view: writes land in filled_labels
    for value in values:
        count = _fill_label(moved, value, plane_spacing)
        if count:
            filled[value] = count
    return FillResult(filled_labels, axis if filled else None, filled)


def _painted_axis(labels: np.ndarray, values: list[int]) -> int:
    """The axis with the most unpainted slices between painted ones of the same label.

    Counted per label, so two labels painted apart do not look like gaps (0 when none).
    """
    gaps = [0, 0, 0]
    for value in values:
        mask = labels == value
        for axis in range(3):
            painted = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            gaps[axis] += int(np.sum(np.diff(painted) - 1))
    return int(np.argmax(gaps))


def _fill_label(moved: np.ndarray, value: int, plane_spacing: list[float]) -> int:
    """Fill ``value`` between its painted slices (axis 0 of ``moved``); slices filled."""
    mask = moved == value
    painted = np.flatnonzero(mask.any(axis=(1, 2)))
    count = 0
    for below, above in zip(painted[:-1], painted[1:]):
        if above - below < 2:
            continue
        window = _plane_window(mask[below] | mask[above])
        near = _signed_distance(mask[below][window], plane_spacing)
        far = _signed_distance(mask[above][window], plane_spacing)
        for index in range(below + 1, above):
            weight = (index - below) / (above - below)
            inside = (1 - weight) * near + weight * far < 0
            plane = moved[index][window]
            plane[inside & (plane == 0)] = value
            count += 1
    return count


def _plane_window(mask: np.ndarray) -> tuple[slice, slice]:
    """The in-plane bounding box of ``mask`` with a margin of one voxel."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(rows[0] - 1, 0), rows[-1] + 2),
        slice(max(cols[0] - 1, 0), cols[-1] + 2),
    )


def _signed_distance(mask: np.ndarray, spacing: list[float]) -> np.ndarray:
    """Distance in mm to the mask's edge: negative inside, positive outside."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(~mask, sampling=spacing) - ndi.distance_transform_edt(
        mask, sampling=spacing
    )

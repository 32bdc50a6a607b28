"""Where the slices of one series lie: sort along the slice normal, check regularity.

Slices are sorted by their position along the normal of the image plane
(cross product of the ImageOrientationPatient row and column cosines), never
by InstanceNumber or file name. A stack is *regular* when every
ImagePositionPatient lies on one straight line along the normal at equal steps;
otherwise (gantry tilt, uneven or missing slices) it must be resampled.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom.headers import SliceRef

log = logging.getLogger(__name__)

#: Slices closer than this (mm) along the normal share one location (4D series).
SAME_LOCATION_MM = 0.05
#: A gap this many times the usual one may split a stack (see :func:`_without_far_outliers`).
OUTLIER_GAP_FACTOR = 10.0
#: The resampled volume holds at most this many times the input's voxels.
MAX_GROWTH = 4.0

NO_POSITION_WARNING = (
    "the images carry no patient position or orientation: they are stacked by instance "
    "number with 1 mm spacing, and their position in the patient is unknown"
)


def tolerance(step: float) -> float:
    """Positions within this (mm) of a regular grid count as on it (DS rounding)."""
    return max(1e-3, 1e-2 * abs(step))


@dataclass(frozen=True, eq=False)
class Stack:
    """The slices of one series sorted along the normal, and where each one lies.

    Vectors are DICOM (x, y, z) LPS. ``phases`` holds one sorted slice list per
    time point/channel (one for an ordinary series). ``depth`` is each slice's
    distance along ``normal`` from the first slice; ``shift`` its in-plane
    offset from the first slice along (``column``, ``row``), in mm.
    """

    phases: tuple[tuple[SliceRef, ...], ...]
    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray
    pixel_spacing: np.ndarray
    origin: np.ndarray
    depth: np.ndarray
    shift: np.ndarray
    thickness: float
    warnings: tuple[str, ...]

    @property
    def n_slices(self) -> int:
        """Slices per phase."""
        return len(self.depth)

    def regular_step(self) -> float | None:
        """The slice step (mm) if the stack is regular, else None."""
        if self.n_slices == 1:
            return self.thickness
        step = float(self.depth[-1] / (self.n_slices - 1))
        on_line = np.abs(self.depth - step * np.arange(self.n_slices)).max() <= tolerance(step)
        in_plane = np.abs(self.shift).max() <= tolerance(float(self.pixel_spacing.min()))
        return step if on_line and in_plane else None

    def step_variation(self) -> float:
        """Largest deviation of a slice-to-slice distance from their mean, relative to it."""
        if self.n_slices < 3:
            return 0.0
        steps = np.hypot(np.diff(self.depth), np.linalg.norm(np.diff(self.shift, axis=0), axis=1))
        return float(np.abs(steps - steps.mean()).max() / steps.mean())

    def geometry(self, step: float, in_plane_offset: np.ndarray | None = None) -> Geometry:
        """A grid on the slice axes (normal, column, row) with ``step`` between planes.

        ``in_plane_offset`` (mm along column, row) moves the origin off slice 0's corner.
        """
        origin = self.origin
        if in_plane_offset is not None:
            origin = origin + in_plane_offset[0] * self.column + in_plane_offset[1] * self.row
        direction_xyz = np.column_stack([self.normal, self.column, self.row])
        return Geometry(
            spacing=(step, *self.pixel_spacing),
            origin=origin[::-1],
            direction=direction_xyz[::-1, :],
        )


def _orthonormal_axes(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal unit vectors from IOP (Gram-Schmidt absorbs DS rounding)."""
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    column = orientation[3:] - (orientation[3:] @ row) * row
    column = column / np.linalg.norm(column)
    return row, column, np.cross(row, column)


def _deduplicate(slices: list[SliceRef]) -> list[SliceRef]:
    """Drop copies of the same instance (same SOPInstanceUID and frame)."""
    seen, unique = set(), []
    for ref in slices:
        key = (ref.sop_instance, ref.frame)
        if ref.sop_instance and key in seen:
            log.debug("dropping a duplicate of instance %s", ref.instance)
            continue
        seen.add(key)
        unique.append(ref)
    return unique


def _consistent(slices: list[SliceRef]) -> tuple[list[SliceRef], list[str]]:
    """The largest group of slices sharing size and orientation (localizers left out)."""

    def key(ref: SliceRef) -> tuple:
        orientation = None if ref.orientation is None else tuple(np.round(ref.orientation, 3))
        return (ref.rows, ref.columns, ref.samples, orientation)

    counts = Counter(key(ref) for ref in slices)
    best = max(counts, key=lambda k: counts[k])
    kept = [ref for ref in slices if key(ref) == best]
    left_out = len(slices) - len(kept)
    if not left_out:
        return kept, []
    return kept, [
        f"{left_out} image(s) of this series have another size or orientation "
        "(for example localizers) and were left out"
    ]


def _phases(
    sorted_slices: list[SliceRef], depth: np.ndarray, name: str, warnings: list[str]
) -> list[list[SliceRef]]:
    """Split slices sharing a location into phases (time points, echoes...)."""
    groups: list[list[int]] = [[0]]
    for index in range(1, len(sorted_slices)):
        if depth[index] - depth[groups[-1][0]] <= SAME_LOCATION_MM:
            groups[-1].append(index)
        else:
            groups.append([index])
    sizes = {len(group) for group in groups}
    if len(sizes) > 1:
        raise UnreadableFileError(
            f"the series {name} holds {len(sorted_slices)} images at {len(groups)} locations "
            "in unequal numbers (repeated or overlapping slices); it cannot be stacked "
            "into one volume"
        )
    per_location = sizes.pop()
    if len(groups) == 1 and per_location > 1:
        if len({ref.order for ref in sorted_slices}) < per_location:
            raise UnreadableFileError(
                f"the {per_location} images of the series {name} all lie at one position, with "
                "no time, trigger, acquisition or echo number telling them apart: they are not "
                "a volume (repeated single slices or localizers?)"
            )
        warnings.append(
            f"all {per_location} images lie at one position: opened as a time series of one "
            "slice, not as a volume"
        )
    if per_location > 1 and sorted_slices[0].samples > 1:
        raise UnreadableFileError(
            f"the series {name} is a colour series with several images per location; "
            "napari-medai cannot open it"
        )
    ordered = [
        sorted((sorted_slices[i] for i in group), key=lambda r: (r.order, r.instance))
        for group in groups
    ]
    return [[location[phase] for location in ordered] for phase in range(per_location)]


def _with_geometry(slices: list[SliceRef], warnings: list[str]) -> list[SliceRef]:
    """Leave out the few slices without a usable position or orientation, when others have one.

    When none has one, every slice is kept (stacked by instance number later).
    """
    placed = [ref for ref in slices if ref.position is not None and ref.orientation is not None]
    if not placed or len(placed) == len(slices):
        return slices
    problems = {ref.orientation_problem for ref in slices if ref.orientation_problem}
    reason = f" ({sorted(problems)[0]})" if problems else ""
    warnings.append(
        f"{len(slices) - len(placed)} image(s) of this series carry no usable position or "
        f"orientation{reason} and were left out"
    )
    return placed


def _without_far_outliers(
    slices: list[SliceRef], along: np.ndarray, warnings: list[str]
) -> tuple[list[SliceRef], np.ndarray]:
    """Split off slices far from the rest (a gap the regular grid could not bridge).

    A gap of more than :data:`OUTLIER_GAP_FACTOR` usual gaps that would make the
    resampled grid exceed its size cap splits the stack; the largest part is kept.
    """
    locations = np.unique(np.round(along / SAME_LOCATION_MM) * SAME_LOCATION_MM)
    if len(locations) < 3:
        return slices, along
    gaps = np.diff(locations)
    usual = float(np.median(gaps))
    if usual <= 0 or gaps.max() <= OUTLIER_GAP_FACTOR * usual:
        return slices, along
    if (locations[-1] - locations[0]) / usual + 1 <= MAX_GROWTH * len(locations):
        return slices, along
    cuts = np.flatnonzero(gaps > OUTLIER_GAP_FACTOR * usual)
    parts = np.split(locations, cuts + 1)
    kept = max(parts, key=len)
    low, high = kept[0] - SAME_LOCATION_MM, kept[-1] + SAME_LOCATION_MM
    inside = (along >= low) & (along <= high)
    left_out = int((~inside).sum())
    warnings.append(
        f"{left_out} image(s) lie far from the other {int(inside.sum())} (a gap of "
        f"{gaps.max():.1f} mm where slices are {usual:.1f} mm apart): opened the "
        f"{len(kept)}-position stack on its own; the far image(s) were left out, not "
        "merged into a coarse grid"
    )
    return [ref for ref, keep in zip(slices, inside) if keep], along[inside]


def build_stack(slices: list[SliceRef], name: str) -> Stack:
    """Sort the slices of one series along its normal and measure where they lie."""
    slices, warnings = _consistent(_deduplicate(slices))
    slices = _with_geometry(slices, warnings)
    first = slices[0]
    spacing = first.pixel_spacing
    if spacing is None:
        spacing = np.ones(2)
        warnings.append("the images carry no pixel spacing: 1 mm pixels assumed")
    thickness = first.thickness or 1.0
    if any(ref.position is None or ref.orientation is None for ref in slices):
        ordered = sorted(slices, key=lambda r: (r.instance, r.order))
        depth = np.arange(len(ordered), dtype=float) * thickness
        problems = sorted({ref.orientation_problem for ref in slices if ref.orientation_problem})
        reason = f" ({problems[0]})" if problems else ""
        return Stack(
            phases=(tuple(ordered),),
            row=np.array([1.0, 0.0, 0.0]),
            column=np.array([0.0, 1.0, 0.0]),
            normal=np.array([0.0, 0.0, 1.0]),
            pixel_spacing=spacing,
            origin=np.zeros(3),
            depth=depth,
            shift=np.zeros((len(ordered), 2)),
            thickness=thickness,
            warnings=(*warnings, NO_POSITION_WARNING + reason),
        )
    row, column, normal = _orthonormal_axes(first.orientation)
    along = np.array([ref.position @ normal for ref in slices])
    slices, along = _without_far_outliers(slices, along, warnings)
    order = np.argsort(along, kind="stable")
    sorted_slices = [slices[i] for i in order]
    phases = _phases(sorted_slices, along[order] - along[order][0], name, warnings)
    positions = np.array([ref.position for ref in phases[0]])
    offsets = positions - positions[0]
    return Stack(
        phases=tuple(tuple(phase) for phase in phases),
        row=row,
        column=column,
        normal=normal,
        pixel_spacing=spacing,
        origin=positions[0],
        depth=offsets @ normal,
        shift=np.column_stack([offsets @ column, offsets @ row]),
        thickness=thickness,
        warnings=tuple(warnings),
    )

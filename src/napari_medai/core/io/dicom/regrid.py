"""Resample an irregular stack of parallel slices onto a regular orthonormal grid.

Gantry tilt (slice origins drift in-plane), uneven spacing and missing slices
all leave parallel slices that no regular grid holds. Hand-written because no
library resamples such a stack: SimpleITK, ITK and scipy resample *regular*
grids only, and ITK's series reader simply stacks the slices at one spacing
(misplacing them by tens of mm on a tilted head CT). The in-plane part (a
sub-pixel translation per slice) uses ``scipy.ndimage.affine_transform``; only
the linear blend between the two neighbouring slices along the normal, and the
choice of grid, are written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom.stack import MAX_GROWTH, Stack, tolerance
from napari_medai.core.jobs import Job, Progress

#: In-plane offsets (in pixels) closer than this to a whole pixel are that pixel: slice
#: positions are decimal strings rounded to about 1e-6 mm, which must not add a row or column.
PIXEL_SNAP = 1e-3


@dataclass(frozen=True, eq=False)
class ResampleGrid:
    """The regular output grid and how each input slice maps onto it.

    ``offsets[k]`` is added to an output (row, column) index to get the index
    in input slice ``k``; ``depths`` are the output planes' distances along the
    normal from slice 0.
    """

    shape: tuple[int, int, int]
    offsets: np.ndarray
    depths: np.ndarray
    geometry: Geometry
    capped: bool


def _mm(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 0.95 else f"{value:.2f}"


def _gap_warnings(depth: np.ndarray) -> list[str]:
    """Missing slices if every gap is a whole multiple of the usual one, else uneven spacing."""
    gaps = np.diff(depth)
    usual = float(np.median(gaps))
    ratios = gaps / usual
    if gaps.min() < 0.95 * usual or np.abs(ratios - np.round(ratios)).max() > 0.05:
        return [f"slices are unevenly spaced: {_mm(gaps.min())} to {_mm(gaps.max())} mm"]
    return [
        f"slice gap of {_mm(gap)} mm between positions {_mm(depth[k])} and {_mm(depth[k + 1])} "
        f"mm along the slice normal: {round(ratio) - 1} slice(s) missing"
        for k, (gap, ratio) in enumerate(zip(gaps, ratios))
        if round(ratio) >= 2
    ]


def describe_irregularity(stack: Stack, grid: ResampleGrid) -> str:
    """The warning for a resampled stack: tilt angle, gap range or missing slices."""
    problems = []
    shift = np.linalg.norm(stack.shift[-1] - stack.shift[0])
    if np.abs(stack.shift).max() > tolerance(float(stack.pixel_spacing.min())):
        angle = math.degrees(math.atan2(shift, stack.depth[-1]))
        problems.append(f"gantry tilt of {angle:.1f} degrees (slices are sheared)")
    step = stack.depth[-1] / max(stack.n_slices - 1, 1)
    if np.abs(stack.depth - step * np.arange(stack.n_slices)).max() > tolerance(step):
        problems.extend(_gap_warnings(stack.depth))
    spacing = grid.geometry.spacing[0]
    note = f"resampled to a regular {_mm(spacing)} mm grid"
    if grid.capped:
        note += f" (coarser than the smallest gap to stay within {MAX_GROWTH:g}x the data size)"
    return "; ".join([*problems, note])


def plan_grid(stack: Stack) -> ResampleGrid:
    """The smallest regular grid holding every slice, on the slice axes.

    In-plane spacing is kept; the plane step is the smallest gap (adjusted so
    the first and last slices lie on planes), unless that would grow the data
    beyond ``MAX_GROWTH`` times.
    """
    spacing = stack.pixel_spacing
    rows, columns = stack.phases[0][0].rows, stack.phases[0][0].columns
    low = stack.shift.min(axis=0)
    extra = np.ceil((stack.shift.max(axis=0) - low) / spacing - PIXEL_SNAP).astype(int)
    n_rows, n_columns = rows + int(extra[0]), columns + int(extra[1])
    offsets = (low - stack.shift) / spacing
    snapped = np.round(offsets)
    offsets = np.where(np.abs(offsets - snapped) < PIXEL_SNAP, snapped, offsets)

    extent = float(stack.depth[-1])
    intervals = extent / float(np.diff(stack.depth).min())
    nearest = round(intervals)
    intervals = nearest if abs(intervals - nearest) < 1e-2 else math.ceil(intervals)
    limit = int(MAX_GROWTH * stack.n_slices * rows * columns / (n_rows * n_columns))
    capped = intervals + 1 > max(limit, stack.n_slices)
    if capped:
        intervals = max(limit, stack.n_slices) - 1
    step = extent / intervals
    return ResampleGrid(
        shape=(intervals + 1, n_rows, n_columns),
        offsets=offsets,
        depths=step * np.arange(intervals + 1),
        geometry=stack.geometry(step, in_plane_offset=low),
        capped=capped,
    )


def resample_job(slices: np.ndarray, depth: np.ndarray, grid: ResampleGrid) -> Job[np.ndarray]:
    """Resample ``slices`` (n, rows, columns) lying at ``depth`` onto ``grid``.

    Each input slice is first moved onto the output's in-plane grid (bilinear),
    then every output plane blends its two neighbouring slices linearly by
    distance along the normal, so each pixel lands where its own slice header
    says. Points outside the scanned slab get the data's minimum. Integer data
    is rounded back to its type.
    """
    fill = slices.min()
    _, n_rows, n_columns = grid.shape
    cache: dict[int, np.ndarray] = {}

    def placed(k: int) -> np.ndarray:
        if k not in cache:
            cache[k] = ndimage.affine_transform(
                slices[k].astype(np.float32),
                np.ones(2),
                offset=grid.offsets[k],
                output_shape=(n_rows, n_columns),
                order=1,
                mode="constant",
                cval=np.nan,
            )
        return cache[k]

    output = np.empty(grid.shape, dtype=slices.dtype)
    last = len(depth) - 1
    for plane, target in enumerate(grid.depths):
        k = int(np.clip(np.searchsorted(depth, target, side="right") - 1, 0, last - 1))
        for done in [key for key in cache if key < k]:
            del cache[done]
        weight = float(np.clip((target - depth[k]) / (depth[k + 1] - depth[k]), 0.0, 1.0))
        if weight < 1e-6:
            values = placed(k)
        elif weight > 1 - 1e-6:
            values = placed(k + 1)
        else:
            values = (1.0 - weight) * placed(k) + weight * placed(k + 1)
        values = np.where(np.isnan(values), fill, values)
        if np.issubdtype(output.dtype, np.integer):
            values = np.rint(values)
        output[plane] = values
        yield Progress((plane + 1) / grid.shape[0], "resampling the slices onto a regular grid")
    return output

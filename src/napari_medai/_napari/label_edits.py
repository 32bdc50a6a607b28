"""The user's label map: model and prompt results written into a Labels layer.

Every result that lands in a layer the user paints in (Predict, Segment into
an existing layer, a prompt) goes through :func:`write_result`, so it is one
step of napari's own undo history: Ctrl+Z restores the user's voxels exactly
and Ctrl+Shift+Z applies the result again. The step records only the voxels
that changed (their indices, old and new values), never a copy of the volume,
and it honours an overwrite policy and the labels the user locked.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from napari.layers import Labels

from napari_medai.core.errors import GeometryError, MedaiError

#: The background label, in the layer and in a result.
BACKGROUND = 0


class Overwrite(StrEnum):
    """How a result meets the labels already in the layer."""

    #: Only background voxels take the result: every label the user has stays.
    KEEP = "keep"
    #: The result wins where it is non-zero; elsewhere the layer stays as it was.
    OVERWRITE = "overwrite"
    #: Inside the region the layer becomes the result, its background included.
    REPLACE = "replace"


@dataclass(frozen=True)
class LabelEdit:
    """What a write did: voxels changed, and voxels kept because a label is locked."""

    layer_name: str
    changed: int
    held: int

    @property
    def message(self) -> str:
        """One line for the dock's status."""
        text = f"{self.changed} voxels of '{self.layer_name}' changed (Ctrl+Z undoes)"
        if self.held:
            text += f"; {self.held} voxels kept because their label is locked"
        return text


def write_result(
    layer: Labels,
    result: np.ndarray,
    policy: Overwrite = Overwrite.KEEP,
    locked: Collection[int] = (),
    region: tuple[slice, ...] | None = None,
) -> LabelEdit:
    """Write ``result`` into ``layer`` inside ``region`` as one undoable step.

    ``region`` (the whole layer by default) is one slice per axis of the
    layer's data; ``result`` has the region's shape. A voxel whose label is in
    ``locked`` is never changed, and no voxel takes a locked label from the
    result: a locked label is finished work. A warning says how many voxels
    the locks kept.
    """
    bounds = _bounds(layer, region)
    current = np.ravel(layer.data[bounds])
    _check_result(layer, result, tuple(b.stop - b.start for b in bounds))
    new = np.ravel(result)
    flat = _voxels_to_write(current, new, policy)
    free = ~_locked(current[flat], new[flat], locked)
    flat, held = flat[free], int(free.size - np.count_nonzero(free))
    if held:
        warnings.warn(
            f"'{layer.name}': {held} voxels kept as they were because label(s) "
            f"{sorted(int(v) for v in locked)} are locked",
            UserWarning,
            stacklevel=2,
        )
    if flat.size:
        indices = _layer_indices(flat, bounds, layer.data.shape)
        # One call of napari's data_setitem is one item of its undo history.
        layer.data_setitem(indices, new[flat].astype(layer.data.dtype, copy=False))
    return LabelEdit(layer.name, changed=int(flat.size), held=held)


def _bounds(layer: Labels, region: tuple[slice, ...] | None) -> tuple[slice, ...]:
    """``region`` as explicit unit-step slices of the layer's data (all of it if None)."""
    if layer.multiscale:
        raise MedaiError(
            f"layer '{layer.name}' is multiscale and cannot take a result: "
            "paint into a single-resolution Labels layer"
        )
    shape = layer.data.shape
    region = region if region is not None else (slice(None),) * len(shape)
    if len(region) != len(shape):
        raise ValueError(f"region {region} has {len(region)} axes, the layer {len(shape)}")
    bounds = tuple(slice(*axis.indices(size)) for axis, size in zip(region, shape, strict=True))
    if any(axis.step != 1 for axis in bounds):
        raise ValueError(f"region {region} must have unit steps")
    return bounds


def _check_result(layer: Labels, result: np.ndarray, shape: tuple[int, ...]) -> None:
    """Refuse a result the layer cannot hold exactly: wrong shape, not labels, out of range."""
    if result.shape != shape:
        raise GeometryError(
            f"the result has shape {result.shape} but layer '{layer.name}' has {shape} "
            "there: pick a Labels layer on the grid of the segmented scan"
        )
    if result.dtype.kind not in "iu":
        raise MedaiError(
            f"the result for '{layer.name}' holds {result.dtype} values, not integer labels"
        )
    if result.size == 0:
        return
    dtype = layer.data.dtype
    low, high = int(result.min()), int(result.max())
    if low < np.iinfo(dtype).min or high > np.iinfo(dtype).max:
        raise MedaiError(
            f"layer '{layer.name}' stores {dtype} values and cannot hold labels "
            f"{low}..{high} of the result: pick a layer with a wider label type"
        )


def _voxels_to_write(current: np.ndarray, new: np.ndarray, policy: Overwrite) -> np.ndarray:
    """Flat indices where ``policy`` lets the result change the layer.

    Only one comparison runs over the whole region; the policy's second test
    runs on the result's non-zero voxels alone, which keeps a write of a big
    volume fast.
    """
    if policy is Overwrite.REPLACE:
        return np.flatnonzero(current != new)
    flat = np.flatnonzero(new != BACKGROUND)
    old = current[flat]
    if policy is Overwrite.KEEP:
        return flat[old == BACKGROUND]
    return flat[old != new[flat]]


def _locked(old: np.ndarray, new: np.ndarray, locked: Collection[int]) -> np.ndarray:
    """Which voxels hold a locked label, or would take one from the result."""
    values = np.fromiter(locked, dtype=np.int64)
    return np.isin(old, values) | np.isin(new, values)


def _layer_indices(
    flat: np.ndarray, bounds: tuple[slice, ...], shape: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """The layer's indices of the region's ``flat`` voxels, in the smallest type that holds them.

    napari keeps these arrays in its undo history: int16 for a 512x512x300 layer
    holds a changed voxel in 6 bytes of indices instead of numpy's default 24.
    """
    dtype = np.min_scalar_type(-max(shape))
    region_shape = tuple(bound.stop - bound.start for bound in bounds)
    return tuple(
        (axis + bound.start).astype(dtype)
        for axis, bound in zip(np.unravel_index(flat, region_shape), bounds, strict=True)
    )

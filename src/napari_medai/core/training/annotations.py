"""Which voxels the user annotated, and what network the pattern calls for.

The user paints whole slices (along any of the three axes) in a Labels layer.
A painted slice is annotated everywhere: its zeros are background there. Every
other voxel is unannotated and ignored by the loss, never taken as background.

A painted axial slice also puts labels into the coronal and sagittal planes that
cross it (a one-voxel line each). Counting those crossing planes as annotated
would teach the model that the unpainted parts of the organ are background, so
the painted planes are the fewest planes that hold every labelled voxel, found
greedily (largest uncovered plane first). Hand-written: no imaging library
infers slice annotations from a label array.

Axial slices can also be declared annotated without being inferred: an object
committed from the Prompt dock spans its slices completely, so the label map
lists them under :data:`ANNOTATED_SLICES` in its metadata. Declared slices are
taken first; the cover only has to explain the labels they leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_medai.core.volume import LabelMap

AXIS_NAMES = ("z", "y", "x")
#: ``LabelMap.metadata`` key: axial slices annotated completely, whether or not painted.
ANNOTATED_SLICES = "annotated_slices"


def declared_slices(labels: LabelMap) -> tuple[int, ...]:
    """The axial slices ``labels`` declares annotated (see :data:`ANNOTATED_SLICES`)."""
    return tuple(int(z) for z in labels.metadata.get(ANNOTATED_SLICES, ()))


def _labelled(labels: np.ndarray, unlabelled_value: int | None) -> np.ndarray:
    labelled = labels != 0
    if unlabelled_value is not None:
        labelled &= labels != unlabelled_value
    return labelled


def painted_planes(
    labels: np.ndarray, unlabelled_value: int | None = None, declared: Sequence[int] = ()
) -> list[np.ndarray]:
    """Per axis (z, y, x), a boolean vector marking the painted planes along it.

    The ``declared`` axial slices come first; the other planes are a greedy
    smallest cover of the labelled voxels they leave: repeatedly take the plane
    holding the most labelled voxels not yet covered (ties: the lower axis, then
    the lower index). Each step costs one plane, not one volume.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (z, y, x), got shape {labels.shape}")
    uncovered = _labelled(labels, unlabelled_value)
    chosen = [np.zeros(n, dtype=bool) for n in labels.shape]
    chosen[0][list(declared)] = True
    uncovered[chosen[0]] = False
    counts = [uncovered.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
    while True:
        axis = max(range(3), key=lambda a: (int(counts[a].max(initial=0)), -a))
        index = int(np.argmax(counts[axis]))
        if counts[axis][index] == 0:
            return chosen
        chosen[axis][index] = True
        plane = np.take(uncovered, index, axis=axis)
        first, second = (b for b in range(3) if b != axis)
        counts[first] -= plane.sum(axis=1)
        counts[second] -= plane.sum(axis=0)
        counts[axis][index] = 0
        np.moveaxis(uncovered, axis, 0)[index] = False


def annotation_mask(
    labels: np.ndarray,
    unlabelled_value: int | None = None,
    dense: bool = False,
    declared: Sequence[int] = (),
) -> np.ndarray:
    """Boolean (z, y, x) mask of the voxels the user annotated.

    A painted slice along any axis and a ``declared`` axial slice (see
    :func:`painted_planes`) are annotated, zeros included; voxels holding
    ``unlabelled_value`` never are. ``dense`` declares every voxel annotated (a
    complete label map, including slices without any label). ``labels`` is only
    read.
    """
    if dense:
        mask = np.ones(labels.shape, dtype=bool)
    else:
        planes = painted_planes(labels, unlabelled_value, declared)
        mask = planes[0][:, None, None] | planes[1][None, :, None] | planes[2][None, None, :]
        mask = np.broadcast_to(mask, labels.shape).copy()
    if unlabelled_value is not None:
        mask &= labels != unlabelled_value
    return mask


@dataclass(frozen=True)
class Dimensionality:
    """The network a training set calls for: ``"2d"``, ``"2.5d"`` or ``"3d"``, and why."""

    kind: str
    reason: str


def choose_dimensionality(
    labels: np.ndarray,
    unlabelled_value: int | None = None,
    dense: bool = False,
    declared: Sequence[int] = (),
) -> Dimensionality:
    """Pick the network from the annotation pattern of one (z, y, x) label array.

    Slice models run along z, so a few painted axial slices call for a 2.5D model
    (the slice plus its neighbours as channels: as fast as 2D, and it sees the
    third dimension). Dense labels, slices painted along y or x, or more than half
    the volume annotated call for a 3D model, which learns from any pattern.
    """
    if dense:
        return Dimensionality("3d", "dense labels")
    planes = painted_planes(labels, unlabelled_value, declared)
    counts = [int(p.sum()) for p in planes]
    if sum(counts) == 0:
        return Dimensionality("2.5d", "no annotations yet")
    if counts[1] or counts[2]:
        painted = ", ".join(f"{n} along {AXIS_NAMES[a]}" for a, n in enumerate(counts) if n)
        return Dimensionality("3d", f"painted slices {painted}")
    if counts[0] > labels.shape[0] / 2:
        return Dimensionality("3d", f"{counts[0]} of {labels.shape[0]} axial slices painted")
    return Dimensionality("2.5d", f"{counts[0]} of {labels.shape[0]} axial slices painted")

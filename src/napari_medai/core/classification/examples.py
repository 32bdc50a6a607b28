"""Training examples for a classifier: boxes with a class, or slices labelled from a mask.

Examples are read, normalised and resized exactly as inference reads them
(:mod:`~napari_medai.core.classification.inputs`), once, into one tensor.
Each keeps its slice position so a split can keep neighbouring slices on the
same side (:func:`~napari_medai.core.classification.metrics.spatial_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_medai.core.classification.config import (
    ClassificationError,
    Region,
    check_regions,
    check_slices,
)
from napari_medai.core.classification.inputs import RegionInputs, SliceInputs
from napari_medai.core.models.card import ModelCard
from napari_medai.core.training.dataset import MR_INTENSITY
from napari_medai.core.volume import LabelMap, Volume

#: CT default: the abdominal soft-tissue window (level 40, width 400 HU).
CT_INTENSITY = {"kind": "window", "low": -160.0, "high": 240.0}

#: Whole-slice examples are resized to at most this edge (a classifier needs
#: the gist of a slice, and small inputs train fast on a CPU).
SLICE_EDGE_MAX = 128
#: Patch edges are multiples of this (the networks halve the size a few times).
PATCH_MULTIPLE = 8


@dataclass
class Examples:
    """Examples ready for training: ``images`` (N, C, *patch), ``labels`` (N,), ``positions`` (N,).

    ``positions`` are slice positions (scan number x 100000 + slice index) for
    spatially separate splits; ``patch_size``, ``intensity``, ``spatial_dims``
    and ``context_slices`` become the model card's.
    """

    images: torch.Tensor
    labels: np.ndarray
    positions: np.ndarray
    class_names: dict[int, str]
    patch_size: list[int]
    intensity: dict[str, Any]
    spatial_dims: int = 2
    context_slices: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int]) -> Examples:
        """The examples at ``indices``."""
        return Examples(
            self.images[indices],
            self.labels[indices],
            self.positions[indices],
            dict(self.class_names),
            list(self.patch_size),
            dict(self.intensity),
            self.spatial_dims,
            self.context_slices,
            list(self.sources),
        )

    def counts(self) -> dict[str, int]:
        """Examples per class name."""
        return {name: int((self.labels == k).sum()) for k, name in sorted(self.class_names.items())}

    def check_classes(self, what: str = "training") -> None:
        """Refuse a class without examples, naming it."""
        empty = [name for name, count in self.counts().items() if count == 0]
        if empty:
            raise ClassificationError(
                f"no {what} examples of class {', '.join(repr(n) for n in empty)}; "
                "annotate at least one of each class"
            )


def _card_like(patch: list[int], intensity: dict[str, Any], context: int) -> ModelCard:
    """A card carrying just what reading needs (patch size, intensity, context)."""
    return ModelCard(
        name="",
        architecture="",
        architecture_args={},
        label_names={},
        patch_size=patch,
        task="classification",
        spatial_dims=2,
        in_channels=2 * context + 1,
        context_slices=context,
        intensity=intensity,
    )


def _round_edge(size: float, cap: int) -> int:
    return int(min(max(PATCH_MULTIPLE, round(size / PATCH_MULTIPLE) * PATCH_MULTIPLE), cap))


def _intensity(volume: Volume, intensity: dict[str, Any] | None) -> dict[str, Any]:
    """The given normalisation, else a soft-tissue window for CT and percentiles for MR.

    Not :func:`~napari_medai.core.training.dataset.choose_intensity`'s window
    around the painted voxels: boxes and slices span air, fat and bone, and a
    window that wide flattens the 10-30 HU between organs that a classifier
    must see.
    """
    if intensity is not None:
        return dict(intensity)
    return dict(CT_INTENSITY) if volume.modality == "CT" else dict(MR_INTENSITY)


def examples_from_regions(
    volume: Volume,
    regions: list[Region],
    labels: list[int],
    class_names: dict[int, str],
    intensity: dict[str, Any] | None = None,
    patch_size: list[int] | None = None,
    scan: int = 0,
    context_slices: int = 0,
) -> Examples:
    """2D boxes (one slice each) with their class label; patch = the boxes' median size.

    ``context_slices`` neighbouring slices on each side become extra channels
    (a 2.5D model's input).
    """
    check_regions(regions, volume.spatial_shape)
    if len(labels) != len(regions):
        raise ClassificationError(f"{len(regions)} boxes but {len(labels)} class labels")
    unknown = sorted({int(v) for v in labels} - set(class_names))
    if unknown:
        raise ClassificationError(f"boxes carry classes {unknown} that have no name")
    if any(r.size[0] != 1 for r in regions):
        raise ClassificationError("the boxes must be 2D, on one slice each")
    box = np.median([r.size[1:] for r in regions], axis=0)
    if patch_size is None:
        patch_size = [1, *(_round_edge(s, 256) for s in box)]
    intensity = _intensity(volume, intensity)
    inputs = RegionInputs(volume, _card_like(patch_size, intensity, context_slices), regions)
    images = inputs.read(list(range(len(regions))), torch.device("cpu"))
    return Examples(
        images,
        np.asarray(labels, dtype=np.int64),
        np.asarray([scan * 100000 + r.start[0] for r in regions], dtype=np.float64),
        dict(class_names),
        list(patch_size),
        intensity,
        context_slices=context_slices,
        # The boxes' size tells the slice scope at what scale the model reads (windows.py).
        sources=[{"kind": "boxes", "count": len(regions), "box": [float(v) for v in box]}],
    )


def slice_classes(labels: np.ndarray, values: list[int], axis: int = 0) -> np.ndarray:
    """Each slice's class from a label map.

    One label value k: class 1 ("k present") when the slice holds k, else 0.
    Several: the value covering most of the slice among ``values`` (class
    1..n in the order given), 0 when none is present.
    """
    if not values:
        raise ClassificationError("choose at least one label value to classify slices by")
    moved = np.moveaxis(labels, axis, 0)
    areas = np.stack([(moved == v).sum(axis=(1, 2)) for v in values], axis=1)
    classes = np.where(areas.max(1) > 0, areas.argmax(1) + 1, 0)
    return classes.astype(np.int64)


def examples_from_label_slices(
    volume: Volume,
    labels: LabelMap,
    values: list[int],
    axis: int = 0,
    intensity: dict[str, Any] | None = None,
    patch_size: list[int] | None = None,
    scan: int = 0,
    context_slices: int = 0,
    slices: Sequence[int] | None = None,
) -> Examples:
    """Every slice along ``axis`` (or those in ``slices``), its class derived from ``labels``.

    See :func:`slice_classes`; ``context_slices`` as in :func:`examples_from_regions`.
    """
    if labels.array.shape != volume.spatial_shape:
        raise ClassificationError(
            f"the labels ({labels.array.shape}) are not on the image's grid "
            f"({volume.spatial_shape})"
        )
    classes = slice_classes(labels.array, values, axis)
    named = [labels.label_names.get(v, f"label {v}") for v in values]
    names = dict(enumerate(["none" if len(values) > 1 else f"no {named[0]}", *named]))
    if patch_size is None:
        shape = [n for a, n in enumerate(volume.spatial_shape) if a != axis]
        scale = min(1.0, SLICE_EDGE_MAX / max(shape))
        patch_size = [1, *(_round_edge(n * scale, SLICE_EDGE_MAX) for n in shape)]
    intensity = _intensity(volume, intensity)
    inputs = SliceInputs(volume, _card_like(patch_size, intensity, context_slices), axis)
    indices = list(range(inputs.count)) if slices is None else [int(i) for i in slices]
    check_slices(indices, inputs.count, axis, "the image")
    images = inputs.read(indices, torch.device("cpu"))
    return Examples(
        images,
        classes[indices],
        scan * 100000 + np.asarray(indices, dtype=np.float64),
        names,
        list(patch_size),
        intensity,
        context_slices=context_slices,
        sources=[{"kind": "slices", "axis": "zyx"[axis], "count": len(indices)}],
    )


def combine(parts: list[Examples]) -> Examples:
    """Examples from several scans as one set (same classes, patch and intensity)."""
    first = parts[0]
    for other in parts[1:]:
        if other.class_names != first.class_names or other.patch_size != first.patch_size:
            raise ClassificationError(
                "examples from different scans use different classes or sizes"
            )
    return Examples(
        torch.cat([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.positions for p in parts]),
        dict(first.class_names),
        list(first.patch_size),
        dict(first.intensity),
        first.spatial_dims,
        first.context_slices,
        [s for p in parts for s in p.sources],
    )

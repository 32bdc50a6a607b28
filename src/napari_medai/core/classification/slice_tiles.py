"""Every slice through a classifier that learnt from boxes.

A classifier trained on 32x32 boxes knows what a box-sized field of the scan
looks like. Squeezed to 32x32, as a slice classifier reads slices, a whole
slice shows it nothing it has seen; and fed whole at the boxes' scale, its
pooled score averages the one box that holds the finding with the many that
do not (a "kidney" model gave every slice the same 0.03, or the same 0.9).
So the slices are read as the model learnt:

- **Verdict:** each axial slice is read as overlapping box-sized windows (half
  a box apart, the last one flush with the edge), classified in batches like
  any boxes. A slice's row of probabilities is that of its window most
  confident of a finding, a class other than the background. The background
  is the class most windows of the scan show (most of a scan is "nothing").
  Written here because MONAI's sliding-window inferers stitch spatial
  outputs, not class scores.
- **Heat map:** the network's layers before its global pooling are
  convolutions, so Grad-CAM runs on each whole slice resized by the boxes'
  scale: one map per slice, with no seams between windows. On the real CT's
  held-out kidney slices its heat inside the kidneys is 2.7-4.2 times that in
  the rest of the body (seeds 0-4, tests/real/test_real_classify.py); within
  a box the map is too coarse for that (1.7-2.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_medai.core.classification.config import ClassificationError, Region
from napari_medai.core.classification.inputs import RegionInputs, SliceInputs
from napari_medai.core.models.card import ModelCard
from napari_medai.core.volume import Volume


def learnt_box(card: ModelCard) -> tuple[int, int] | None:
    """The in-plane size (voxels) of the boxes a 2D classifier was trained on.

    ``None`` when it learnt from whole slices, or its card does not say (a
    model from elsewhere): it then reads slices as slices. Cards written before
    the box size was recorded fall back to the patch size, as their boxes were
    resized to it.
    """
    sources = card.training.get("sources") if isinstance(card.training, dict) else None
    if card.spatial_dims != 2 or not isinstance(sources, list) or not sources:
        return None
    if not all(isinstance(s, dict) and s.get("kind") == "boxes" for s in sources):
        return None
    sizes = [s["box"] for s in sources if _is_size(s.get("box"))]
    if not sizes:
        return int(card.patch_size[1]), int(card.patch_size[2])
    y, x = np.median(np.asarray(sizes, dtype=np.float64), axis=0)
    return max(1, round(y)), max(1, round(x))


def _is_size(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and v >= 1 for v in value)
    )


def _starts(length: int, size: int) -> list[int]:
    """Window starts along an edge of ``length``: half a window apart, the last flush."""
    if size >= length:
        return [0]
    step = max(1, size // 2)
    return [*range(0, length - size, step), length - size]


class SliceWindows(RegionInputs):
    """Box-sized windows tiling every axial slice, slice by slice."""

    def __init__(self, volume: Volume, card: ModelCard, box: tuple[int, int]) -> None:
        slices, height, width = volume.spatial_shape
        corners = [(y, x) for y in _starts(height, box[0]) for x in _starts(width, box[1])]
        regions = [
            Region((z, y, x), (z + 1, y + box[0], x + box[1]))
            for z in range(slices)
            for y, x in corners
        ]
        super().__init__(volume, card, regions)
        self.box = box
        self.slices = slices
        self.per_slice = len(corners)

    def verdicts(self, table: np.ndarray) -> tuple[np.ndarray, int]:
        """(slices, classes) rows, one per slice from its most confident finding window; and
        the background class.
        """
        background = int(np.bincount(table.argmax(1), minlength=table.shape[1]).argmax())
        findings = np.delete(table, background, axis=1).max(1)
        best = findings.reshape(self.slices, self.per_slice).argmax(1)
        rows = table.reshape(self.slices, self.per_slice, -1)
        return rows[np.arange(self.slices), best], background

    def describe(self, background: str) -> dict:
        """What the provenance says of how the slices were read."""
        return {
            "box": list(self.box),
            "windows_per_slice": self.per_slice,
            "stride": [max(1, b // 2) for b in self.box],
            "verdict": f"the window most confident of a class other than '{background}'",
            "heat_map": "Grad-CAM of the whole slice at the boxes' scale",
        }


class WholeSlices(SliceInputs):
    """Axial slices resized by the scale at which the model's boxes became its patch."""

    def __init__(self, volume: Volume, card: ModelCard, box: Sequence[int]) -> None:
        super().__init__(volume, card, 0)
        shape = volume.spatial_shape[1:]
        self.patch = [max(1, round(n * p / b)) for n, p, b in zip(shape, card.patch_size[1:], box)]
        self.voxels = card.in_channels * self.patch[0] * self.patch[1]


def check_window_axis(card: ModelCard, axis: int) -> None:
    """Refuse slices along y or x for a model that learnt from boxes on axial slices."""
    if axis != 0:
        raise ClassificationError(
            f"'{card.name}' learnt from boxes drawn on axial slices; classify its slices along z"
        )

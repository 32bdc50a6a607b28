"""A held-out set the user picks to score a classifier on (torch-free).

Either slices labelled by a label map (a slice is class k when it holds the
k-th label value, as in training) or boxes with a class name each, optionally
restricted to some slices, so that slices the model was not trained on can be
held out. :meth:`HeldOutSet.describe` says what the figures were computed on.
The widget, scripts and tests fill in the same object; scoring is
:func:`~napari_medai.core.classification.evaluation.evaluate_job`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from napari_medai.core.classification.config import ClassificationError, Region, check_slices
from napari_medai.core.volume import LabelMap

#: Past this many runs of consecutive slices, a description gives the span and count only.
_MAX_RUNS = 4


def parse_slices(text: str) -> list[int] | None:
    """Slice indices from ``"15-29"`` or ``"3, 7-9"``; None (every slice) for blank text."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    indices: set[int] = set()
    for part in parts:
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ClassificationError(
                f"slices must be given as '15-29' or '3, 7-9', not {text!r}"
            ) from None
        if low > high:
            raise ClassificationError(
                f"the slice range {part!r} runs backwards; write {high}-{low}"
            )
        indices.update(range(low, high + 1))
    return sorted(indices)


def slices_text(indices: Sequence[int]) -> str:
    """Slice indices as short text: ``"15-29"``, ``"3, 7-9"``, or ``"2-80 (31 slices)"``."""
    values = sorted(set(int(i) for i in indices))
    if not values:
        return "none"
    runs: list[list[int]] = [[values[0], values[0]]]
    for value in values[1:]:
        if value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    if len(runs) > _MAX_RUNS:
        return f"{values[0]}-{values[-1]} ({len(values)} slices)"
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def training_slices(count: int, held_out: Sequence[int] | None) -> list[int]:
    """The slices of ``count`` that training may use: all but the ``held_out`` ones."""
    skipped = set(held_out or [])
    kept = [i for i in range(count) if i not in skipped]
    if not kept:
        raise ClassificationError("every slice is held out; leave some to train on")
    return kept


def training_boxes(regions: Sequence[Region], held_out: Sequence[int] | None) -> list[int]:
    """The numbers of the boxes training may use: those off the ``held_out`` slices (z)."""
    skipped = set(held_out or [])
    kept = [n for n, region in enumerate(regions) if region.start[0] not in skipped]
    if not kept:
        raise ClassificationError("every box lies on a held-out slice; leave some to train on")
    return kept


@dataclass
class HeldOutSet:
    """Examples the user picked: labelled slices (``labels``) or classed boxes (``regions``).

    Slices: every slice along ``axis``; its class is 0 when it holds none of
    ``values``, else k for the k-th value (the largest area wins), exactly as
    training derives it. Boxes: 2D boxes in voxel indices with their class
    name in ``classes`` (one of the model's class names). ``slices`` keeps
    only those slice indices (along ``axis``; a box's slice is its z); None
    keeps all. ``image_name`` and ``source_name`` (the Labels or box layer,
    or a ``file`` as ``source_noun`` says) go into the description.
    """

    image_name: str
    source_name: str
    labels: LabelMap | None = None
    values: list[int] = field(default_factory=list)
    axis: int = 0
    regions: list[Region] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    slices: list[int] | None = None
    source_noun: str = "layer"

    @property
    def kind(self) -> str:
        """``"slices"`` or ``"boxes"``."""
        return "slices" if self.labels is not None else "boxes"

    def check(self) -> None:
        """Refuse a set that names no examples, before anything is read."""
        if self.axis not in (0, 1, 2):
            raise ClassificationError(
                f"the slice axis must be 0, 1 or 2 (z, y, x), not {self.axis}"
            )
        if self.slices is not None and not self.slices:
            raise ClassificationError("the slice range is empty; give slices such as '15-29'")
        if self.kind == "slices":
            if not self.values:
                raise ClassificationError("choose at least one label value to classify slices by")
            return
        if not self.regions:
            raise ClassificationError(f"'{self.source_name}' holds no boxes to score the model on")
        if len(self.classes) != len(self.regions):
            raise ClassificationError(
                f"{len(self.regions)} boxes but {len(self.classes)} class names in "
                f"'{self.source_name}'"
            )

    def slice_indices(self, count: int) -> list[int]:
        """The picked slice indices, checked against ``count`` slices."""
        if self.slices is None:
            return list(range(count))
        axis = self.axis if self.kind == "slices" else 0
        check_slices(self.slices, count, axis, f"'{self.image_name}'")
        return list(self.slices)

    def picked_boxes(self) -> tuple[list[Region], list[str]]:
        """The boxes (and their classes) on the picked slices."""
        keep = [
            n
            for n, region in enumerate(self.regions)
            if self.slices is None or region.start[0] in self.slices
        ]
        if not keep:
            raise ClassificationError(
                f"no box of '{self.source_name}' lies on slices {slices_text(self.slices or [])}"
            )
        return [self.regions[n] for n in keep], [self.classes[n] for n in keep]

    def describe(self, slices: Sequence[int]) -> str:
        """What the figures are computed on, given the slices actually used."""
        source = f"user-picked: {self.source_noun} '{self.source_name}'"
        where = f"of image '{self.image_name}'"
        if self.kind == "slices":
            names = self.labels.label_names
            values = ", ".join(f"{v} = {names[v]}" if v in names else str(v) for v in self.values)
            axis = "zyx"[self.axis]
            return f"{source} slices {slices_text(slices)} along {axis} (label {values}) {where}"
        return f"{source} boxes on slices {slices_text(slices)} {where}"

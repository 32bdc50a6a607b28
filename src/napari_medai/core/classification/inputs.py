"""What a classifier is fed for each scope, and where its heat maps go back.

Each scope is a list of inputs read from the scan on demand: the whole volume
(in the model's space), every slice along an axis, or boxes. An input is
normalised like the whole scan (statistics fixed once), padded where a box
leaves the image, and resized to the card's patch size when its size differs.
:meth:`Inputs.place` puts an input's heat map back where the input came from,
on the scan's own grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from napari_medai.core.classification.config import Region
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.preprocessing import (
    ModelSpace,
    Normaliser,
    SourceGrid,
    model_space,
    to_model_space,
)
from napari_medai.core.volume import Volume


def resize(batch: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) resized to ``size`` with (bi/tri)linear interpolation; as is if equal.

    ``F.interpolate`` on the batch rather than MONAI's ``Resize``, which does
    the same per sample with metadata tracking on top.
    """
    size = tuple(int(n) for n in size)
    if tuple(batch.shape[2:]) == size:
        return batch
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(batch, size=size, mode=mode, align_corners=False)


class Inputs:
    """Base: ``count`` inputs; ``read`` gives a normalised, patch-sized batch."""

    def __init__(self, card: ModelCard, data: np.ndarray, normaliser: Normaliser) -> None:
        self.card = card
        self.data = data
        self.normaliser = normaliser
        self.patch = card.patch_size[1:] if card.spatial_dims == 2 else card.patch_size
        #: Voxels of one input as the network takes it.
        self.voxels = card.in_channels * math.prod(self.patch)
        self.count = 0
        #: Whether inputs may hold NaN where they leave the image.
        self.pads = False

    def raw(self, index: int) -> np.ndarray:
        """Input ``index`` as (C, *spatial), a view where possible; NaN outside the image."""
        raise NotImplementedError

    def read(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """The normalised inputs at ``indices`` as one (B, C, *patch) batch on ``device``.

        Inputs of one size are copied once, straight into a float32 batch, then
        normalised and resized as one; boxes of different sizes one by one.
        """
        raws = [self.raw(index) for index in indices]
        if len({r.shape for r in raws}) == 1:
            stacked = np.empty((len(raws), *raws[0].shape), dtype=np.float32)
            for row, raw in zip(stacked, raws):
                row[...] = raw
            return self._prepared([stacked], device)
        return self._prepared([r[None].astype(np.float32) for r in raws], device)  # copies

    def _prepared(self, groups: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """float32 (B, C, *spatial) groups, ours to change, normalised and resized as one batch.

        Only boxes can leave the image, so only they pay for the NaN fill.
        """
        batches = []
        for group in groups:
            batch = self.normaliser(torch.from_numpy(group).to(device))
            if self.pads:
                batch = batch.nan_to_num_(0.0)
            batches.append(resize(batch, self.patch))
        return batches[0] if len(batches) == 1 else torch.cat(batches)

    def place(self, cam: np.ndarray, index: int, heat: np.ndarray) -> None:
        """Write input ``index``'s (*patch) heat map into ``cam`` (the scan's grid)."""
        raise NotImplementedError


class VolumeInput(Inputs):
    """The whole scan in the model's space; the heat map is resampled back onto the scan."""

    def __init__(self, volume: Volume, card: ModelCard) -> None:
        self.space: ModelSpace = model_space(volume, card)
        data = to_model_space(volume, card, self.space)
        super().__init__(card, data, Normaliser.from_card(card.intensity, data))
        self.volume = volume
        self.count = 1

    def raw(self, index: int) -> np.ndarray:
        return self.data

    def place(self, cam: np.ndarray, index: int, heat: np.ndarray) -> None:
        model_grid = resize(torch.from_numpy(heat)[None, None], self.space.shape)[0, 0].numpy()
        if not self.space.identity:
            grid = SourceGrid(self.space, self.volume.geometry, self.volume.spatial_shape)
            model_grid = grid.resample(np.ascontiguousarray(model_grid, dtype=np.float32))
        cam[...] = model_grid


class SliceInputs(Inputs):
    """Every slice along ``axis`` (2.5D models get neighbouring slices as channels)."""

    def __init__(self, volume: Volume, card: ModelCard, axis: int) -> None:
        data = volume.array if volume.array.ndim == 4 else volume.array[np.newaxis]
        super().__init__(card, data, Normaliser.from_card(card.intensity, data))
        self.axis = axis
        self.count = data.shape[1 + axis]

    def raw(self, index: int) -> np.ndarray:
        context = self.card.context_slices
        if context:
            where = np.clip(np.arange(index - context, index + context + 1), 0, self.count - 1)
            taken = np.take(self.data[0], where, axis=self.axis)
            return np.moveaxis(taken, self.axis, 0)
        where: list[slice | int] = [slice(None)] * 4
        where[1 + self.axis] = index
        return self.data[tuple(where)]

    def place(self, cam: np.ndarray, index: int, heat: np.ndarray) -> None:
        target = np.take(cam, index, axis=self.axis)
        resized = resize(torch.from_numpy(heat)[None, None], target.shape)[0, 0].numpy()
        where: list[slice | int] = [slice(None)] * 3
        where[self.axis] = index
        cam[tuple(where)] = resized


class RegionInputs(Inputs):
    """Boxes in voxel indices; a 2D model reads one axial slice (plus context) per box."""

    def __init__(self, volume: Volume, card: ModelCard, regions: list[Region]) -> None:
        data = volume.array if volume.array.ndim == 4 else volume.array[np.newaxis]
        super().__init__(card, data, Normaliser.from_card(card.intensity, data))
        self.regions = regions
        self.count = len(regions)
        self.pads = True
        self.shape = data.shape[1:]
        corners = np.array([r.start + r.stop for r in regions], dtype=np.intp).reshape(-1, 6)
        self.starts = corners[:, :3]
        self.sizes = corners[:, 3:] - self.starts
        #: Whether each box lies wholly inside the image.
        self.inside = (self.starts >= 0).all(1) & (self.starts + self.sizes <= self.shape).all(1)

    def read(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """As :meth:`Inputs.read`; boxes of one size inside the image in one gather.

        The gather indexes a sliding-window view of the scan with every box's
        corner at once, instead of slicing and copying box by box: for a
        hundred small boxes the per-box Python work was most of the reading.
        """
        rows = np.asarray(indices, dtype=np.intp)
        sizes = self.sizes[rows]
        if len(rows) < 2 or not self.inside[rows].all() or (sizes != sizes[0]).any():
            return super().read(indices, device)
        return self._prepared([self._gather(self.starts[rows], tuple(sizes[0].tolist()))], device)

    def _gather(self, starts: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
        """float32 (B, C, *spatial) voxels of same-size boxes inside the image at ``starts``."""
        context = self.card.context_slices
        if self.card.spatial_dims == 3:
            windows = sliding_window_view(self.data, size, axis=(1, 2, 3))
            taken = windows[:, starts[:, 0], starts[:, 1], starts[:, 2]].swapaxes(0, 1)
        elif context:
            windows = sliding_window_view(self.data[0], size[1:], axis=(1, 2))
            neighbours = starts[:, :1] + np.arange(-context, context + 1)
            neighbours = neighbours.clip(0, self.shape[0] - 1)
            taken = windows[neighbours, starts[:, 1:2], starts[:, 2:3]]
        else:
            windows = sliding_window_view(self.data, size[1:], axis=(2, 3))
            taken = windows[:, starts[:, 0], starts[:, 1], starts[:, 2]].swapaxes(0, 1)
        out = np.empty(taken.shape, dtype=np.float32)
        out[...] = taken
        return out

    def _box(self, start: Sequence[int], stop: Sequence[int], channels: Sequence[int] | None):
        """The box's voxels, NaN outside the image; channels from ``channels`` z slices if given."""
        inside = [slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, self.shape)]
        offset = [s.start - a for s, a in zip(inside, start)]
        size = [b - a for a, b in zip(start, stop)]
        if channels is None:
            source = self.data[(slice(None), *inside)]
        else:
            source = self.data[0][(list(channels), *inside[1:])][:, None]
        out = np.full((source.shape[0], *size), np.nan, dtype=np.float32)
        out[(slice(None), *(slice(o, o + s.stop - s.start) for o, s in zip(offset, inside)))] = (
            source
        )
        return out

    def raw(self, index: int) -> np.ndarray:
        """The box's voxels; a view (no NaN padding) when the box lies inside the image.

        Boxes inside are the common case, and skipping the padded copy halves
        the reading time of a hundred small boxes.
        """
        region = self.regions[index]
        z = region.start[0]
        context = self.card.context_slices
        inside = bool(self.inside[index])
        if inside and self.card.spatial_dims == 3:
            return self.data[(slice(None), *map(slice, region.start, region.stop))]
        if inside:
            plane = tuple(map(slice, region.start[1:], region.stop[1:]))
            if not context:
                return self.data[(slice(None), z, *plane)]
            neighbours = np.clip(np.arange(z - context, z + context + 1), 0, self.shape[0] - 1)
            return self.data[0][(neighbours, *plane)]
        if self.card.spatial_dims == 3:
            return self._box(region.start, region.stop, None)
        neighbours = np.clip(np.arange(z - context, z + context + 1), 0, self.shape[0] - 1)
        channels = neighbours.tolist() if context else None
        return self._box((z, *region.start[1:]), (z + 1, *region.stop[1:]), channels)[:, 0]

    def place(self, cam: np.ndarray, index: int, heat: np.ndarray) -> None:
        region = self.regions[index]
        size = region.size if self.card.spatial_dims == 3 else region.size[1:]
        resized = resize(torch.from_numpy(heat)[None, None], size)[0, 0].numpy()
        if self.card.spatial_dims == 2:
            resized = resized[None]
        inside = [
            slice(max(a, 0), min(b, n)) for a, b, n in zip(region.start, region.stop, self.shape)
        ]
        part = resized[tuple(slice(s.start - a, s.stop - a) for s, a in zip(inside, region.start))]
        np.maximum(cam[tuple(inside)], part, out=cam[tuple(inside)])

"""Segmentation inference as a generator job.

Pipeline: map the scan into the model's space (``core.models.preprocessing``), run
the network over sliding windows (3D models) or slice by slice along z (2D and
2.5D models), or call the model's whole-volume predictor, average softmax over
flips for test-time augmentation, stitch with Gaussian weights, map the class
probabilities back onto the source grid and take the argmax there.

Memory stays near what the result needs, so a 1000-slice scan fits: only the
non-background class probabilities are stitched (background is one minus their
sum), in a buffer one window deep whose finished planes are labelled at once
when the model runs on the scan's own grid; a model that resamples gets its
model-space array, and the scan goes into it and the result back out of it one
z slab at a time, so no full-size float copy of the scan's grid is ever made.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import Merger

from napari_medai.core.devices import (
    CPU,
    Placement,
    autocast,
    choose_device,
    is_out_of_memory,
    next_fallback,
    release_memory,
)
from napari_medai.core.errors import MedaiError
from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.models.card import ModelCard, refuse_non_segmentation
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.preprocessing import (
    ModelSpace,
    Normaliser,
    SourceGrid,
    check_image_values,
    model_space,
    to_model_space,
)
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult
from napari_medai.core.volume import LabelMap, Volume

logger = logging.getLogger(__name__)

#: Receives stitched planes: where they lie along z and their (channels, z, y, x) values.
Sink = Callable[[slice, np.ndarray], None]


#: A 3D model needs at least this many voxels along each axis.
MIN_VOLUME_SIZE = 2
#: Source voxels per slab when mapping between the scan's grid and the model's (16
#: slices of 512x512): a slab's five float32 temporaries (resampled, stacked, background,
#: sum, comparison) take 80 MB, measured 300 MB at 64 slices.
SLAB_VOXELS = 1 << 22
#: Source slices read beyond each side of a slab, so each model voxel the slab owns has
#: its interpolation neighbours inside what was read, whatever ITK's rounding.
HALO = 2


def segment_job(volume: Volume, model: LoadedModel, config: SegmentConfig) -> Job[SegmentResult]:
    """Segment ``volume`` with ``model``; a job yielding progress per window batch.

    Checks the input and the device at once (raising :class:`MedaiError`), so
    the caller learns about a bad choice before any work starts.
    """
    if not 0.0 <= config.overlap < 1.0:
        raise MedaiError(f"window overlap must be at least 0 and below 1, not {config.overlap}")
    if config.window_batch is not None and config.window_batch < 1:
        raise MedaiError(f"window batch must be at least 1, not {config.window_batch}")
    _check_input(volume, model.card)
    device = choose_device(config.device)
    return _segment(volume, model, config, device)


def _check_input(volume: Volume, card: ModelCard) -> None:
    refuse_non_segmentation(card, "segment")
    if card.num_classes < 2:
        raise MedaiError(f"the model '{card.name}' names no foreground label to segment")
    check_image_values(volume.array)
    thin = [n for n in volume.spatial_shape if n < MIN_VOLUME_SIZE]
    if card.spatial_dims == 3 and thin:
        raise MedaiError(
            f"the 3D model '{card.name}' needs a volume, but the image is "
            f"{'x'.join(map(str, volume.spatial_shape))} voxels (at least {MIN_VOLUME_SIZE} "
            "along each axis); use a 2D model for single slices"
        )
    channels = volume.array.shape[0] if volume.array.ndim == 4 else 1
    wanted = card.in_channels
    if card.spatial_dims == 2 and card.context_slices > 0:
        if channels != 1 or wanted != 2 * card.context_slices + 1:
            raise MedaiError(
                f"the 2.5D model '{card.name}' takes {wanted} channels, which must be "
                f"{2 * card.context_slices + 1} neighbouring slices of a single-channel image"
            )
    elif channels != wanted:
        raise MedaiError(
            f"the model '{card.name}' takes {wanted} input channel(s) but the image has {channels}"
        )


def _segment(
    volume: Volume, model: LoadedModel, config: SegmentConfig, device: torch.device
) -> Job[SegmentResult]:
    card = model.card
    started = time.perf_counter()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    home = _parameter_device(model.network)
    runner = _Runner(model, config, device)
    durations: dict[str, float] = {}
    data = merged = None
    try:
        yield Progress(0.0, "mapping the scan into the model's space")
        space = model_space(volume, card)
        data = _to_model_space(volume, card, space)
        normaliser = Normaliser.from_card(card.intensity, data)
        durations["to_model_space"] = time.perf_counter() - started
        yield Progress(0.05, f"running {card.name} on {runner.placement.compute}")

        mark = time.perf_counter()
        model.network.eval().to(runner.placement.compute)
        outputs = None
        if model.predict_volume is not None:
            predicted = yield from scaled(runner.whole_volume(data, normaliser), 0.05, 0.9)
            merged = predicted.numpy()
        elif space.identity:
            # Finished planes are labelled as the windows pass: no full-size probabilities.
            outputs = _Outputs.allocate(volume.spatial_shape, card.num_classes, config)
            classes, disagreement = card.num_classes, runner.disagreement
            decide = partial(outputs.decide, classes=classes, disagreement=disagreement)
            yield from scaled(runner.sliding_windows(data, normaliser, decide), 0.05, 0.9)
        else:
            merged = np.empty((runner.channels, *space.shape), dtype=np.float32)
            yield from scaled(runner.sliding_windows(data, normaliser, _writer(merged)), 0.05, 0.9)
        data = None
        durations["inference"] = time.perf_counter() - mark

        mark = time.perf_counter()
        if outputs is None:
            outputs = yield from scaled(_to_source(merged, space, volume, runner), 0.9, 1.0)
        merged = None
        durations["to_source"] = time.perf_counter() - mark
        durations["total"] = time.perf_counter() - started
        provenance = {
            **model.run_provenance(config, str(runner.placement.compute), runner.fallbacks, when),
            "durations": {key: round(value, 3) for key, value in durations.items()},
            "model_space": space.describe(),
            "normalisation": {**card.intensity, "statistics": normaliser.describe()},
        }
        result = _wrap(outputs, volume, card, provenance)
        yield Progress(1.0, "done")
        return result
    finally:
        data = merged = None
        model.network.to(home)
        for used in {device, runner.placement.compute}:
            release_memory(used)


def _parameter_device(network: torch.nn.Module) -> torch.device:
    parameter = next(iter(network.parameters()), None)
    return parameter.device if parameter is not None else CPU


def _flips(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """No flip, plus every combination of flipped spatial axes when ``tta``."""
    axes = range(2, 2 + spatial_dims)
    if not tta:
        return [()]
    return [
        dims for count in range(spatial_dims + 1) for dims in itertools.combinations(axes, count)
    ]


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over the class axis (1) divided by log(classes), so in [0, 1]."""
    logs = probabilities.clamp_min(1e-12).log_()
    return -(probabilities * logs).sum(1, keepdim=True) / math.log(probabilities.shape[1])


class _Runner:
    """Runs the network where the current :class:`Placement` says, stepping down on OOM."""

    def __init__(self, model: LoadedModel, config: SegmentConfig, device: torch.device) -> None:
        self.model = model
        self.card = model.card
        self.config = config
        batch = config.window_batch or (1 if device.type == "cpu" else 4)
        self.placement = Placement(device, device, batch)
        self.fallbacks: list[str] = []
        self.disagreement = config.uncertainty and config.tta

    @property
    def channels(self) -> int:
        """Stitched channels: classes 1..K-1, plus the TTA disagreement when asked for."""
        return self.card.num_classes - 1 + int(self.disagreement)

    def _fall_back(self, merger: _GaussianMerger | None) -> str:
        step = next_fallback(self.placement)
        if step is None:
            raise MedaiError(
                f"not enough memory to run '{self.card.name}' even one window at a time on the "
                "CPU; close other programs or use a smaller model"
            )
        previous, (self.placement, message) = self.placement, step
        if merger is not None:
            merger.to(self.placement.merge)
        if self.placement.compute != previous.compute:
            self.model.network.to(self.placement.compute)
        release_memory(previous.compute)
        release_memory(previous.merge)
        self.fallbacks.append(message)
        logger.warning(message)
        return message

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        classes = self.card.num_classes
        if logits.shape[1] == 1 and classes == 2:
            foreground = torch.sigmoid(logits)
            return torch.cat([1.0 - foreground, foreground], dim=1)
        if logits.shape[1] != classes:
            raise MedaiError(
                f"the model '{self.card.name}' gave {logits.shape[1]} output channels but its "
                f"card names {classes} labels"
            )
        return torch.softmax(logits, dim=1)

    def _predict(
        self, predictor: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
    ) -> torch.Tensor:
        """Stitched channels for a normalised batch, averaged over the TTA flips."""
        flips = _flips(batch.ndim - 2, self.config.tta)
        mean = entropy = None
        for dims in flips:
            probabilities = predictor(batch.flip(dims) if dims else batch)
            if probabilities.shape[2:] != batch.shape[2:]:
                raise MedaiError(
                    f"the model '{self.card.name}' returned shape {tuple(probabilities.shape[2:])}"
                    f" for input {tuple(batch.shape[2:])}; its patch size may not suit it"
                )
            if dims:
                probabilities = probabilities.flip(dims)
            mean = probabilities if mean is None else mean.add_(probabilities)
            if self.disagreement:
                term = _entropy(probabilities)
                entropy = term if entropy is None else entropy.add_(term)
            del probabilities
        mean.div_(len(flips))
        if entropy is None:
            return mean[:, 1:].contiguous()
        information = _entropy(mean).sub_(entropy.div_(len(flips))).clamp_min_(0.0)
        return torch.cat([mean[:, 1:], information], dim=1)

    def _network(self, batch: torch.Tensor) -> torch.Tensor:
        return self._probabilities(self.model.network(batch))

    def _volume_predictor(self, batch: torch.Tensor) -> torch.Tensor:
        return self._probabilities(self.model.predict_volume(batch))  # type: ignore[misc]

    def whole_volume(self, data: np.ndarray, normaliser: Normaliser) -> Job[torch.Tensor]:
        """The model's own whole-volume predictor, as one step."""
        self.placement = Placement(self.placement.compute, CPU, 1)
        while True:
            yield Progress(0.0, f"running {self.card.name} on the whole volume")
            try:
                batch = torch.from_numpy(np.array(data, dtype=np.float32)[np.newaxis])
                batch = normaliser(batch.to(self.placement.compute))
                with torch.no_grad(), autocast(self.placement.compute):
                    merged = self._predict(self._volume_predictor, batch)[0].to(CPU)
                yield Progress(1.0, "model finished")
                return merged
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
            batch = None
            yield Progress(0.0, self._fall_back(None))

    def sliding_windows(self, data: np.ndarray, normaliser: Normaliser, sink: Sink) -> Job[None]:
        """Windows of the card's patch size (slices for 2D models), one batch per step.

        Stitched planes go to ``sink`` as soon as no later window reaches them.
        """
        layout = _WindowLayout(self.card, data.shape[1:], self.config.overlap)
        windows = layout.windows()
        merger = None
        try:
            while merger is None:
                try:
                    merger = _GaussianMerger(self.channels, layout, self.placement.merge, sink)
                except RuntimeError as error:
                    if not is_out_of_memory(error):
                        raise
                if merger is None:
                    yield Progress(0.0, self._fall_back(None))
            done = 0
            while done < len(windows):
                starts = windows[done : done + self.placement.batch]
                placement = self.placement
                values = None
                try:
                    # One name for the batch, so only its normalised form is alive in the network.
                    batch = layout.pad(normaliser(layout.read(data, starts, placement.compute)))
                    with torch.no_grad(), autocast(placement.compute):
                        output = self._predict(self._network, batch)
                        values = merger.weigh(layout.crop(output)).to(placement.merge)
                except RuntimeError as error:
                    if not is_out_of_memory(error):
                        raise
                batch = output = None
                if values is None:
                    yield Progress(done / len(windows), self._fall_back(merger))
                    continue
                for start, window in zip(starts, values):
                    merger.aggregate(window[None], start)
                values = None
                done += len(starts)
                yield Progress(
                    done / len(windows), f"window {done}/{len(windows)} on {placement.compute}"
                )
            merger.finalize()
        finally:
            merger = None


class _WindowLayout:
    """Window positions as MONAI's sliding-window inferer places them.

    Each axis gets ``dense_patch_slices`` starts with the interval
    ``int(patch * (1 - overlap))`` (the rule of ``sliding_window_inference``),
    windows are every combination, and an axis shorter than the patch holds one
    window padded with zeros at its end. Hand-written instead of MONAI's
    SlidingWindowSplitter, which pads the whole input to a multiple of the
    step: a full-size copy plus windows beyond the image.
    """

    def __init__(self, card: ModelCard, shape: Sequence[int], overlap: float) -> None:
        self.two_d = card.spatial_dims == 2
        self.context = card.context_slices
        self.shape = tuple(int(n) for n in shape)
        patch = [int(n) for n in card.patch_size]
        self.patch = (1, *patch[1:]) if self.two_d else tuple(patch)
        if any(n < 1 for n in self.patch):
            raise MedaiError(f"the model '{card.name}' has an invalid patch size {card.patch_size}")
        self.block = tuple(min(p, n) for p, n in zip(self.patch, self.shape))
        self.starts: list[list[int]] = []
        for size, patch_size in zip(self.shape, self.patch):
            padded = max(size, patch_size)
            interval = (
                patch_size if patch_size == padded else max(int(patch_size * (1 - overlap)), 1)
            )
            slices = dense_patch_slices((padded,), (patch_size,), (interval,))
            self.starts.append([int(window[0].start) for window in slices])

    def windows(self) -> list[tuple[int, ...]]:
        """Start (z, y, x) of every window, z slowest."""
        return list(itertools.product(*self.starts))

    def read(
        self, data: np.ndarray, starts: Sequence[tuple[int, ...]], device: torch.device
    ) -> torch.Tensor:
        """The raw windows at ``starts`` as one float32 batch on ``device`` (not yet padded)."""
        depth, rows, cols = self.block
        blocks = []
        for z, y, x in starts:
            rows_cols = (slice(y, y + rows), slice(x, x + cols))
            if not self.two_d:
                blocks.append(data[(slice(None), slice(z, z + depth), *rows_cols)])
            elif self.context:
                # 2.5D: neighbouring slices as channels, repeating the edge slices.
                neighbours = np.arange(z - self.context, z + self.context + 1)
                neighbours = np.clip(neighbours, 0, self.shape[0] - 1)
                blocks.append(data[(0, neighbours, *rows_cols)])
            else:
                blocks.append(data[(slice(None), z, *rows_cols)])
        return torch.from_numpy(np.stack(blocks).astype(np.float32, copy=False)).to(device)

    def pad(self, batch: torch.Tensor) -> torch.Tensor:
        """Zero-pad normalised windows at their end up to the patch size."""
        spatial = self.patch[1:] if self.two_d else self.patch
        missing = [p - n for p, n in zip(spatial, batch.shape[2:])]
        if not any(missing):
            return batch
        return F.pad(batch, [amount for m in reversed(missing) for amount in (0, m)])

    def crop(self, values: torch.Tensor) -> torch.Tensor:
        """Network output back to the windows' extent inside the image, as (B, C, z, y, x)."""
        if self.two_d:
            values = values.unsqueeze(2)
        depth, rows, cols = self.block
        return values[..., :depth, :rows, :cols]


class _GaussianMerger(Merger):
    """Gaussian-weighted average of overlapping windows, stitched in a window-deep buffer.

    Hand-written because MONAI's AvgMerger weighs all voxels of a window alike
    and keeps full-size value and count maps. Here each window's weight is the
    product of MONAI's 1D Gaussian importance maps along z, y and x; as the
    windows are every combination of per-axis starts, the sum of weights at a
    voxel is the product of three 1D sums, so normalising needs no full-size
    array. Windows arrive in z order, so the planes below a window's first
    plane are final when it arrives: they are normalised, handed to ``sink``
    and dropped, and the buffer holds one window's depth of planes.
    """

    def __init__(
        self, channels: int, layout: _WindowLayout, device: torch.device, sink: Sink
    ) -> None:
        super().__init__(merged_shape=(channels, *layout.shape), device=device)
        self.sink = sink
        #: The scan's plane held in the buffer's first plane.
        self.origin = 0
        profiles = [
            compute_importance_map((patch,), mode="gaussian")[:block]
            for patch, block in zip(layout.patch, layout.block)
        ]
        self.weight = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2]
        self.sums = []
        for profile, starts, size in zip(profiles, layout.starts, layout.shape):
            total = torch.zeros(size, dtype=torch.float32)
            for start in starts:
                total[start : start + profile.shape[0]] += profile
            self.sums.append(total)
        depth = (layout.block[0], *layout.shape[1:])
        self.values = torch.zeros((channels, *depth), dtype=torch.float32, device=device)

    def to(self, device: torch.device) -> None:
        """Move the running sums to ``device`` (the OOM ladder's first step)."""
        self.values = self.values.to(device)
        self.device = device

    def weigh(self, values: torch.Tensor) -> torch.Tensor:
        """Multiply (B, C, z, y, x) window outputs by the window weight, in place."""
        return values.mul_(self.weight.to(values.device))

    def aggregate(self, values: torch.Tensor, location: Sequence[int]) -> None:
        """Add one weighted (1, C, z, y, x) window whose first voxel is at ``location``.

        Windows must come in z order (:meth:`_WindowLayout.windows`).
        """
        self._release(location[0])
        first = location[0] - self.origin
        region = tuple(slice(s, s + n) for s, n in zip((first, *location[1:]), values.shape[2:]))
        self.values[(slice(None), *region)] += values[0].to(self.values.device)

    def _release(self, end: int) -> None:
        """Normalise the planes before ``end``, hand them to the sink, and move the buffer on."""
        count = min(end, self.merged_shape[1]) - self.origin
        if count <= 0:
            return
        where = slice(self.origin, self.origin + count)
        depth, rows, cols = (total.to(self.values.device) for total in self.sums)
        planes = self.values[:, :count].div(depth[where, None, None]).div_(rows[:, None])
        self.sink(where, planes.div_(cols).to(CPU).numpy())
        kept = self.values.shape[1] - count
        self.values[:, :kept] = self.values[:, count:].clone()
        self.values[:, kept:] = 0.0
        self.origin += count

    def finalize(self) -> None:
        """Hand the planes still held to the sink."""
        if not self.is_finalized:
            self._release(self.merged_shape[1])
            self.is_finalized = True


def _writer(merged: np.ndarray) -> Sink:
    """A sink that writes stitched planes into ``merged`` (model space, mapped back later)."""

    def write(where: slice, planes: np.ndarray) -> None:
        merged[:, where] = planes

    return write


def _slabs(shape: Sequence[int]) -> list[slice]:
    """Consecutive z ranges of about :data:`SLAB_VOXELS` voxels covering ``shape``."""
    step = max(1, SLAB_VOXELS // max(1, int(shape[1]) * int(shape[2])))
    return [slice(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


def _shifted(geometry: Geometry, start: Sequence[float]) -> Geometry:
    """The grid of a box of ``geometry`` whose first voxel is ``geometry``'s voxel ``start``."""
    return Geometry(geometry.spacing, geometry.index_to_world(start)[0], geometry.direction)


def _source_z(space: ModelSpace, source: Geometry) -> tuple[np.ndarray, float]:
    """Coefficients (per model axis) and offset of the source z index of a model voxel."""
    to_index = np.linalg.inv(source.direction @ np.diag(source.spacing))
    matrix = to_index @ space.geometry.direction @ np.diag(space.geometry.spacing)
    offset = to_index @ (space.geometry.origin - source.origin)
    return matrix[0], float(offset[0])


def _model_box(
    coefficients: np.ndarray, offset: float, shape: Sequence[int], low: float, high: float
) -> tuple[slice, ...] | None:
    """Bounding box of the model voxels whose source z index lies in [low, high), or None."""
    extremes = [sorted((0.0, a * (n - 1))) for a, n in zip(coefficients, shape)]
    box = []
    for axis, (a, n) in enumerate(zip(coefficients, shape)):
        others_low = sum(lo for other, (lo, _) in enumerate(extremes) if other != axis)
        others_high = sum(hi for other, (_, hi) in enumerate(extremes) if other != axis)
        first, last = 0, n - 1
        if abs(a) > 1e-12:
            ends = np.array([low - offset - others_high, high - offset - others_low]) / a
            ends = np.clip(np.sort(ends), -1.0, float(n))
            first, last = max(first, math.floor(ends[0])), min(last, math.ceil(ends[1]))
        if first > last:
            return None
        box.append(slice(first, last + 1))
    return tuple(box)


def _to_model_space(volume: Volume, card: ModelCard, space: ModelSpace) -> np.ndarray:
    """:func:`to_model_space`, resampled slab by slab of the scan when the card has a spacing.

    The whole-scan call converts the scan to SimpleITK in one piece (two full-size
    copies besides the result). Here each z slab of the scan, with :data:`HALO`
    slices either side, is resampled onto the box of model voxels whose source z
    index it owns, so those voxels get the values the whole-scan call gives them.
    """
    if space.identity or card.spacing is None:
        return to_model_space(volume, card, space)
    channels = volume.array if volume.array.ndim == 4 else volume.array[np.newaxis]
    depth = volume.spatial_shape[0]
    out = np.zeros((channels.shape[0], *space.shape), dtype=np.float32)
    coefficients, offset = _source_z(space, volume.geometry)
    for slab in _slabs(volume.spatial_shape):
        low = -math.inf if slab.start == 0 else slab.start
        high = math.inf if slab.stop == depth else slab.stop
        box = _model_box(coefficients, offset, space.shape, low, high)
        if box is None:
            continue
        read = slice(max(slab.start - HALO, 0), min(slab.stop + HALO, depth))
        part = Volume(channels[:, read], _shifted(volume.geometry, (read.start, 0, 0)))
        box_space = ModelSpace(
            _shifted(space.geometry, [s.start for s in box]),
            tuple(s.stop - s.start for s in box),
            identity=False,
        )
        values = to_model_space(part, card, box_space)
        axes = np.ix_(*[np.arange(s.start, s.stop) for s in box])
        z_index = sum(a * index for a, index in zip(coefficients, axes)) + offset
        np.copyto(out[(slice(None), *box)], values, where=(z_index >= low) & (z_index < high))
        values = z_index = None
    return out


@dataclass
class _Outputs:
    """The label map and the asked-for maps on the source grid, filled slab by slab."""

    labels: np.ndarray
    foreground: np.ndarray | None
    spread: np.ndarray | None

    @classmethod
    def allocate(cls, shape: tuple[int, ...], classes: int, config: SegmentConfig) -> _Outputs:
        """Empty outputs: labels, and the maps ``config`` asks for."""
        labels = np.empty(shape, dtype=np.uint8 if classes <= 256 else np.uint16)
        foreground = np.empty(shape, dtype=np.float32) if config.probabilities else None
        spread = np.empty(shape, dtype=np.float32) if config.uncertainty else None
        return cls(labels, foreground, spread)

    def decide(self, where: slice, channels: np.ndarray, classes: int, disagreement: bool) -> None:
        """Argmax labels (and the optional maps) at z ``where`` from stitched classes 1..K-1."""
        rest = classes - 1
        others = channels[:rest]
        background = 1.0 - others.sum(axis=0)
        if rest == 1:
            self.labels[where] = others[0] > background
        else:
            self.labels[where] = np.argmax(np.concatenate([background[None], others]), axis=0)
        if self.spread is not None and disagreement:
            np.clip(channels[rest], 0.0, 1.0, out=self.spread[where])
        elif self.spread is not None:
            every = np.clip(np.concatenate([background[None], others]), 1e-12, 1.0)
            entropy = -(every * np.log(every)).sum(axis=0) / np.log(classes)
            np.clip(entropy, 0.0, 1.0, out=self.spread[where])
        if self.foreground is not None:
            np.clip(others.sum(axis=0), 0.0, 1.0, out=self.foreground[where])


def _to_source(
    channels: np.ndarray, space: ModelSpace, volume: Volume, runner: _Runner
) -> Job[_Outputs]:
    """Labels, probability and uncertainty arrays on the source grid, slab by slab.

    Each z slab of the source grid is resampled from the model-space channels and
    labelled at once, so besides the outputs only one slab's probabilities are
    held, never the class probabilities of the whole scan.
    """
    shape = volume.spatial_shape
    classes = runner.card.num_classes
    outputs = _Outputs.allocate(shape, classes, runner.config)
    slabs = _slabs(shape)
    for done, slab in enumerate(slabs):
        yield Progress(done / len(slabs), "mapping the result back onto the scan's grid")
        if space.identity:
            part = channels[:, slab]
        else:
            slab_shape = (slab.stop - slab.start, *shape[1:])
            grid = SourceGrid(space, _shifted(volume.geometry, (slab.start, 0, 0)), slab_shape)
            part = np.stack([grid.resample(channel) for channel in channels])
        outputs.decide(slab, part, classes, runner.disagreement)
        part = None
    return outputs


def _wrap(
    outputs: _Outputs, volume: Volume, card: ModelCard, provenance: dict[str, Any]
) -> SegmentResult:
    labels, foreground, spread = outputs.labels, outputs.foreground, outputs.spread
    name = f"{volume.metadata.get('name', 'image')} ({card.name})"
    return SegmentResult(
        labels=LabelMap(
            labels,
            volume.geometry,
            {"name": name, "provenance": provenance},
            dict(card.label_names),
        ),
        probability=None
        if foreground is None
        else Volume(foreground, volume.geometry, {"name": f"{name} probability"}),
        uncertainty=None
        if spread is None
        else Volume(spread, volume.geometry, {"name": f"{name} uncertainty"}),
        provenance=provenance,
    )

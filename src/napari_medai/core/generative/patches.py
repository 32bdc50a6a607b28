"""2D axial patches of one scan for GAN training, with held-out slices for quality.

Intensities are normalised as segmentation training does
(:func:`~napari_medai.core.training.dataset.choose_intensity`) into [0, 1],
then mapped to [-1, 1] for the networks' ``tanh``. The fixed range used is kept,
so samples can be mapped back to the scan's units (e.g. Hounsfield units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_medai.core.generative.config import GenerativeError, check_patch_input
from napari_medai.core.models.preprocessing import Normaliser
from napari_medai.core.training.dataset import choose_intensity
from napari_medai.core.volume import LabelMap, Volume

#: At most this many labelled voxels are kept as patch centres.
MAX_CENTRES = 200_000


def intensity_range(image: Volume, intensity: dict[str, Any]) -> tuple[float, float]:
    """The fixed [low, high] in scan units that the normalisation maps onto [0, 1]."""
    channels = np.asarray(image.array, dtype=np.float32)[np.newaxis]
    stats = Normaliser.from_card(intensity, channels).describe()[0]
    if "low" not in stats:
        raise GenerativeError("GANs need a window or percentile intensity normalisation")
    return float(stats["low"]), float(stats["high"])


@dataclass
class _Split:
    """Normalised slices ([-1, 1]), their labels, and the voxels patches are centred on."""

    slices: np.ndarray
    labels: np.ndarray | None
    foreground: np.ndarray  # (n, 3) labelled voxels: slice index within ``slices``, y, x


class PatchSource:
    """Random square patches from the training slices or from the held-out slices.

    Without labels, patches come from anywhere in the slices. With labels, only
    slices holding a label are used and patches are centred on labelled
    voxels half of the time, so a conditional GAN sees each label map with its
    image and an unconditional one learns the region around the mask.
    ``values`` are the label values the conditional generator's channels stand for.
    """

    def __init__(
        self,
        image: Volume,
        labels: LabelMap | None,
        patch: int,
        holdout_every: int,
        rng: np.random.Generator,
    ) -> None:
        check_patch_input(image, labels, patch)
        self.patch = patch
        self.rng = rng
        pairs = [(image, labels if labels is not None else _empty_labels(image))]
        self.intensity = choose_intensity(pairs)
        self.low, self.high = intensity_range(image, self.intensity)
        scaled = (np.asarray(image.array, dtype=np.float32) - self.low) / (self.high - self.low)
        normalised = np.clip(scaled, 0.0, 1.0) * 2.0 - 1.0
        label_array = None if labels is None else np.asarray(labels.array)
        if label_array is None:
            usable = np.arange(image.spatial_shape[0])
        else:
            usable = np.flatnonzero(label_array.any(axis=(1, 2)))
        self.values = [0] if label_array is None else [0, *np.unique(label_array[usable])[1:]]
        self.values = [int(v) for v in self.values]
        held = usable[usable % holdout_every == holdout_every // 2] if len(usable) > 1 else []
        train = np.setdiff1d(usable, held)
        self.held_out = len(held) > 0
        self.train = self._split(normalised, label_array, train)
        self.test = self._split(normalised, label_array, held if self.held_out else train)
        self.train_slices = [int(z) for z in train]
        self.test_slices = [int(z) for z in (held if self.held_out else train)]

    def _split(self, image: np.ndarray, labels: np.ndarray | None, zs: np.ndarray) -> _Split:
        zs = np.asarray(zs, dtype=int)
        slices = np.ascontiguousarray(image[zs])
        if labels is None:
            return _Split(slices, None, np.empty((0, 3), dtype=int))
        crop = np.ascontiguousarray(labels[zs])
        foreground = np.argwhere(crop != 0)
        foreground = foreground[:: max(1, len(foreground) // MAX_CENTRES)]
        return _Split(slices, crop, foreground)

    def _corner(self, centre: int, extent: int) -> int:
        """A window start so the patch holds ``centre`` and fits in ``extent``."""
        return int(np.clip(centre - self.rng.integers(self.patch), 0, extent - self.patch))

    def batch(self, size: int, held_out: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images (B, 1, p, p) in [-1, 1], labels (B, p, p) int64 or None)."""
        split = self.test if held_out else self.train
        images, labels = [], []
        for _ in range(size):
            if len(split.foreground) and self.rng.random() < 0.5:
                z, y, x = (
                    int(v) for v in split.foreground[self.rng.integers(len(split.foreground))]
                )
            else:
                z, y, x = (int(self.rng.integers(n)) for n in split.slices.shape)
            y0 = self._corner(y, split.slices.shape[1])
            x0 = self._corner(x, split.slices.shape[2])
            window = (z, slice(y0, y0 + self.patch), slice(x0, x0 + self.patch))
            images.append(split.slices[window])
            if split.labels is not None:
                labels.append(split.labels[window])
        image_batch = torch.from_numpy(np.stack(images)[:, None].copy())
        label_batch = None if not labels else torch.from_numpy(np.stack(labels).astype(np.int64))
        return image_batch, label_batch


def _empty_labels(image: Volume) -> LabelMap:
    return LabelMap(np.zeros(image.spatial_shape, dtype=np.uint8), image.geometry)

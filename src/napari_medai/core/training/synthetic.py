"""Synthetic (image, mask) pairs mixed into segmentation training, opt-in.

A generator (``core.generative``) makes 2D pairs; :class:`SyntheticMixer`
replaces a fixed share of every training batch with them. Each pair is
normalised with the model's own intensity normalisation, repeated across a
2.5D model's context channels (a synthetic slice has no neighbours), and
placed at a random spot of the training patch; only its own pixels count as
annotated, so the masked loss ignores the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_medai.core.errors import MedaiError
from napari_medai.core.models.preprocessing import Normaliser


@dataclass
class SyntheticPairs:
    """Generated 2D pairs: ``images`` (n, y, x) in scan units, ``masks`` (n, y, x) labels."""

    images: np.ndarray
    masks: np.ndarray
    generator: str = ""

    @classmethod
    def from_samples(cls, samples: Any) -> SyntheticPairs:
        """From a generator's ``SyntheticSamples`` (which must carry masks)."""
        if samples.masks is None:
            raise MedaiError(
                "these samples have no masks; only a label-conditioned generator makes "
                "pairs to train segmentation on"
            )
        return cls(samples.images, samples.masks, str(samples.metadata.get("generator", "")))


class SyntheticMixer:
    """Draws synthetic pairs shaped like the trainer's patches."""

    def __init__(
        self,
        pairs: SyntheticPairs,
        ratio: float,
        intensity: dict[str, Any],
        patch: tuple[int, int],
        channels: int,
        classes: list[int],
        rng: np.random.Generator,
    ) -> None:
        images, masks = np.asarray(pairs.images), np.asarray(pairs.masks)
        if images.ndim != 3 or images.shape != masks.shape or not len(images):
            raise MedaiError(
                f"synthetic pairs need images and masks of one shape (n, y, x); got "
                f"{images.shape} and {masks.shape}"
            )
        if not 0.0 < ratio < 1.0:
            raise MedaiError(
                f"the synthetic share of a batch must be above 0 and below 1, not {ratio}"
            )
        unknown = sorted(set(np.unique(masks).tolist()) - {0, *classes})
        if unknown:
            raise MedaiError(
                f"the synthetic masks hold labels {unknown} that the annotations do not use"
            )
        normaliser = Normaliser.from_card(intensity, images.astype(np.float32)[None])
        self.images = normaliser(torch.from_numpy(images.astype(np.float32))[None])[0].numpy()
        self.masks = masks.astype(np.int64)
        self.pairs = pairs
        self.ratio = ratio
        self.patch = patch
        self.channels = channels
        self.rng = rng

    def count(self, batch: int) -> int:
        """How many of a batch of ``batch`` are synthetic (at least one)."""
        return max(1, int(round(self.ratio * batch)))

    def _place(self, size: int, extent: int) -> tuple[slice, slice]:
        """(source, destination) slices fitting a ``size`` sample into ``extent``."""
        if size >= extent:
            start = int(self.rng.integers(size - extent + 1))
            return slice(start, start + extent), slice(0, extent)
        start = int(self.rng.integers(extent - size + 1))
        return slice(0, size), slice(start, start + size)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (B, C, y, x), target (B, y, x), mask (B, y, x)) like the patch sampler's."""
        height, width = self.patch
        image = np.zeros((size, self.channels, height, width), dtype=np.float32)
        target = np.zeros((size, height, width), dtype=np.int64)
        mask = np.zeros((size, height, width), dtype=bool)
        for b in range(size):
            k = int(self.rng.integers(len(self.images)))
            (sy, dy), (sx, dx) = (
                self._place(n, e) for n, e in zip(self.masks[k].shape, self.patch)
            )
            image[b, :, dy, dx] = self.images[k][sy, sx]
            target[b, dy, dx] = self.masks[k][sy, sx]
            mask[b, dy, dx] = True
        return torch.from_numpy(image), torch.from_numpy(target), torch.from_numpy(mask)

    def describe(self) -> dict[str, Any]:
        """What the card records: that synthetic data was used, and how much."""
        return {
            "used": True,
            "pairs": int(len(self.images)),
            "patch": list(self.masks.shape[1:]),
            "batch_share": self.ratio,
            "generator": self.pairs.generator,
        }

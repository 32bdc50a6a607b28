"""What a GAN run needs to know and what sampling gives back.

Torch-free, so widgets and the CLI import it cheaply, and a result coming back
from the worker process unpickles in napari without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medai.core.errors import MedaiError
from napari_medai.core.models.card import ModelCard
from napari_medai.core.training.config import BUDGET_CLOCKS
from napari_medai.core.volume import LabelMap, Volume

#: noise -> image patch, or label map -> image patch (SPADE, pix2pix-style).
KINDS = ("unconditional", "conditional")
#: Patch edges must halve four times (the generators start at 1/16 of the patch).
PATCH_MULTIPLE = 16
#: Name prefix and metadata flag of every generated layer or file.
SYNTHETIC_PREFIX = "synthetic"


class GenerativeError(MedaiError):
    """A GAN cannot be trained or sampled with this input."""


@dataclass
class GanConfig:
    """How to train a GAN on 2D axial patches of one scan.

    ``kind`` "unconditional" learns noise -> patch; "conditional" learns label
    map -> patch and needs labels. With labels (either kind), patches come from
    the labelled axial slices only, half of them centred on a labelled voxel
    (training "inside a mask"); without, from anywhere in the scan.
    ``holdout_every`` keeps every n-th axial slice out of training; quality is
    measured on patches of those slices. Budgets: ``max_time_s`` seconds of
    training, ``max_iters`` steps (either may be None, not both).
    ``budget_clock`` "wall" counts elapsed seconds, "cpu" this process's CPU
    seconds (benchmarks on a shared machine: the same work whatever the load).
    ``preview_every_s`` sets how often a preview grid rides on a progress event.
    Quality is measured on ``quality_samples`` patches, the two-sample
    classifier trained for ``quality_steps`` steps.
    """

    out_dir: Path
    kind: str = "unconditional"
    patch_size: int = 64
    max_time_s: float | None = 60.0
    max_iters: int | None = None
    batch_size: int = 16
    latent_dim: int = 64
    learning_rate: float = 2e-4
    l1_weight: float = 10.0
    seed: int | None = None
    holdout_every: int = 5
    preview_every_s: float = 3.0
    quality_samples: int = 128
    quality_steps: int = 150
    device: str = "auto"
    num_threads: int | None = None
    overwrite: bool = False
    name: str | None = None
    budget_clock: str = "wall"

    def check(self) -> None:
        """Raise :class:`GenerativeError` for settings that cannot work."""
        if self.kind not in KINDS:
            raise GenerativeError(f"unknown GAN kind {self.kind!r}; choose one of {KINDS}")
        if self.patch_size < 32 or self.patch_size % PATCH_MULTIPLE:
            raise GenerativeError(
                f"the patch size must be a multiple of {PATCH_MULTIPLE} from 32 up, "
                f"not {self.patch_size}"
            )
        if self.max_time_s is None and self.max_iters is None:
            raise GenerativeError("give a time budget or an iteration budget")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise GenerativeError(f"the time budget must be positive, not {self.max_time_s} s")
        if self.max_iters is not None and self.max_iters < 1:
            raise GenerativeError(f"the iteration budget must be at least 1, not {self.max_iters}")
        if self.batch_size < 2:
            raise GenerativeError(f"the batch size must be at least 2, not {self.batch_size}")
        if self.budget_clock not in BUDGET_CLOCKS:
            raise GenerativeError(f"the budget clock is 'wall' or 'cpu', not {self.budget_clock!r}")
        if self.holdout_every < 2:
            raise GenerativeError("holdout_every must be 2 or more (one slice in n is held out)")


def check_training_input(image: Volume, labels: LabelMap | None, config: GanConfig) -> None:
    """Refuse settings, a scan or labels a GAN cannot train on, before any worker starts."""
    config.check()
    if config.kind == "conditional" and labels is None:
        raise GenerativeError("a label-conditioned GAN needs labels: pick a labels layer")
    check_patch_input(image, labels, config.patch_size)


def check_patch_input(image: Volume, labels: LabelMap | None, patch: int) -> None:
    """Refuse a scan (and labels) that ``patch`` x ``patch`` axial patches cannot come from."""
    if image.array.ndim != 3:
        raise GenerativeError(
            "the image has channels or time points; GANs train on single-channel 3D scans"
        )
    _, height, width = image.spatial_shape
    if height < patch or width < patch:
        raise GenerativeError(
            f"the image slices are {height}x{width} pixels, smaller than the {patch}x{patch} "
            "patch; choose a smaller patch size"
        )
    if labels is None:
        return
    if labels.array.shape != image.spatial_shape:
        raise GenerativeError(
            f"the labels (grid {labels.array.shape}) are not on the image's grid "
            f"{image.spatial_shape}; pick the labels painted on this image"
        )
    if not np.any(labels.array):
        raise GenerativeError(
            "the labels are empty: paint the structure on at least one slice, "
            "or train an unconditional GAN without labels"
        )


@dataclass
class SyntheticSamples:
    """Generated patches (n, y, x) in scan units, and their label maps for a conditional GAN."""

    images: np.ndarray
    masks: np.ndarray | None
    pixel_spacing_mm: tuple[float, float]
    label_names: dict[int, str]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class GanResult:
    """The saved generator package, its card, the loss history and the quality report."""

    path: Path
    card: ModelCard
    history: list[dict[str, Any]]
    quality: dict[str, Any]

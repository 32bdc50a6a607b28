"""Training data from (image, label map) pairs: normalise, split, sample, augment.

Every pair is normalised exactly as inference will normalise a new scan (the
card's ``intensity`` field), its annotation mask computed, and a few annotated
axial slices held out for validation. :class:`PatchSampler` draws patches around
annotated voxels (class-balanced), and :func:`augment` applies random affine
and intensity changes to a whole batch of tensors.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Warp
from monai.networks.layers import AffineTransform
from monai.transforms import Compose, RandGaussianNoise, RandScaleIntensity, RandShiftIntensity
from monai.utils import convert_to_tensor

from napari_medai.core.errors import GeometryError, MedaiError
from napari_medai.core.models.preprocessing import Normaliser
from napari_medai.core.training.annotations import (
    AXIS_NAMES,
    annotation_mask,
    declared_slices,
    painted_planes,
)
from napari_medai.core.training.strengths import AugmentStrengths
from napari_medai.core.volume import LabelMap, Volume

#: CT: a window on the Hounsfield units of the painted structures (see
#: :func:`choose_intensity`), at least this wide; MR and unknown modalities:
#: robust percentiles, as MR intensities have no absolute scale.
MIN_CT_WINDOW = 400.0
MR_INTENSITY = {"kind": "percentile", "low": 0.5, "high": 99.5, "clip": True}
#: At most this many labelled voxels are looked at to choose a CT window.
MAX_WINDOW_SAMPLES = 1_000_000

#: At most this many annotated voxels per class are kept as patch centres.
MAX_CENTRES = 200_000
#: At most this many held-out slices are validated (validation must stay cheap).
MAX_VALIDATION_SLICES = 16


class TrainingDataError(MedaiError):
    """The annotations or images cannot be used for training."""


def normalise(volume: Volume, intensity: dict[str, Any]) -> np.ndarray:
    """The scan normalised as inference will normalise it (float32, (z, y, x))."""
    # A copy: the normaliser may work in place, and the user's scan stays untouched.
    channels = np.array(volume.array, dtype=np.float32)[np.newaxis]
    normaliser = Normaliser.from_card(intensity, channels)
    return normaliser(torch.from_numpy(channels)[np.newaxis]).numpy()[0, 0]


def choose_intensity(
    pairs: list[tuple[Volume, LabelMap]], unlabelled_value: int | None = None
) -> dict[str, Any]:
    """The card's intensity normalisation, from the first scan's modality.

    CT gets a fixed window (the same numbers for every future scan), centred
    on the median HU of the labelled voxels and twice as wide as their 1-99%
    range, at least :data:`MIN_CT_WINDOW`: a liver gets about [-90, 310] HU,
    a bone a window wide enough to keep its cortex apart from its marrow. A
    tight window learns faster than the full HU range because the structure's
    contrast fills the input.
    """
    if pairs[0][0].modality != "CT":
        return dict(MR_INTENSITY)
    samples = []
    for image, labels in pairs:
        if image.array.ndim == 3 and labels.array.shape == image.array.shape:
            labelled = labels.array != 0
            if unlabelled_value is not None:
                labelled &= labels.array != unlabelled_value
            samples.append(np.asarray(image.array)[labelled])
    values = np.concatenate(samples) if samples else np.empty(0)
    if values.size > MAX_WINDOW_SAMPLES:
        values = values[:: values.size // MAX_WINDOW_SAMPLES + 1]
    if values.size == 0:
        return {"kind": "window", "low": -1000.0, "high": 1000.0}
    low, centre, high = (float(v) for v in np.percentile(values, [1, 50, 99]))
    width = max(MIN_CT_WINDOW, 2.0 * (high - low))
    return {"kind": "window", "low": round(centre - width / 2), "high": round(centre + width / 2)}


@dataclass
class PreparedPair:
    """One training pair on its own grid, ready for sampling.

    ``target`` holds the labels where annotated and 0 elsewhere; ``train_mask``
    and ``val_mask`` split the annotated voxels by held-out axial slices.
    """

    image: np.ndarray
    target: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    val_slices: list[int]
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingData:
    """All pairs plus what they share.

    ``classes`` are the painted foreground label values, ``label_names`` the
    names the label maps give them (unnamed values are left out), ``held_out``
    whether validation slices were kept out of training.
    """

    pairs: list[PreparedPair]
    classes: list[int]
    label_names: dict[int, str]
    held_out: bool


def _check_pair(index: int, image: Volume, labels: LabelMap) -> None:
    where = f"training pair {index + 1}"
    if image.array.ndim != 3:
        raise TrainingDataError(
            f"{where}: the image has {image.array.shape[0]} channels or time points; "
            "training takes single-channel 3D scans"
        )
    if labels.array.shape != image.spatial_shape or not labels.geometry.is_close(
        image.geometry, tol=1e-3
    ):
        raise GeometryError(
            f"{where}: the labels (grid {labels.array.shape}) are not on the image's grid "
            f"{image.spatial_shape}; paint them on this image or resample them onto it"
        )


def _describe(image: Volume, mask: np.ndarray, target: np.ndarray, planes: list) -> dict:
    """Training-data facts for the card, free of patient identifiers."""
    values, counts = np.unique(target[mask], return_counts=True)
    return {
        "shape": list(image.spatial_shape),
        "spacing_mm": [round(float(s), 4) for s in image.geometry.spacing],
        "modality": image.modality,
        "annotated_voxels": int(mask.sum()),
        "painted_slices": {AXIS_NAMES[a]: int(p.sum()) for a, p in enumerate(planes)},
        "label_voxels": {str(int(v)): int(c) for v, c in zip(values, counts) if v},
    }


def prepare_pairs(
    pairs: list[tuple[Volume, LabelMap]],
    intensity: dict[str, Any],
    validation_fraction: float,
    rng: np.random.Generator,
    unlabelled_value: int | None = None,
    dense: bool = False,
) -> TrainingData:
    """Normalise, mask and split every pair; the inputs are only read.

    ``floor(validation_fraction * n)`` of the ``n`` annotated axial slices (at
    most :data:`MAX_VALIDATION_SLICES`) are held out, as long as one is left
    for training. With fewer slices nothing is held out and validation scores
    the training slices (``held_out`` is False).
    """
    if not pairs:
        raise TrainingDataError("no training data: give at least one image with its labels")
    prepared, classes, names = [], set(), {0: "background"}
    slices = []
    for index, (image, labels) in enumerate(pairs):
        _check_pair(index, image, labels)
        declared = declared_slices(labels)
        mask = annotation_mask(labels.array, unlabelled_value, dense, declared)
        target = np.where(mask, labels.array, 0).astype(np.int64)
        classes.update(int(v) for v in np.unique(target[mask]) if v)
        names.update({int(k): str(v) for k, v in labels.label_names.items()})
        planes = painted_planes(labels.array, unlabelled_value, declared)
        normalised = normalise(image, intensity)
        prepared.append(
            PreparedPair(
                image=np.ascontiguousarray(normalised, dtype=np.float32),
                target=target,
                train_mask=mask,
                val_mask=np.zeros_like(mask),
                val_slices=[],
                description=_describe(image, mask, target, planes),
            )
        )
        slices += [(index, int(z)) for z in np.flatnonzero(mask.any(axis=(1, 2)))]
    if not slices:
        raise TrainingDataError(
            "no annotations: paint at least one label on a slice before training"
        )
    if not classes:
        raise TrainingDataError(
            "the annotations hold background only: paint the structure to learn too"
        )
    n_val = min(math.floor(validation_fraction * len(slices)), MAX_VALIDATION_SLICES)
    held_out = 0 < n_val < len(slices)
    if held_out:
        for k in sorted(rng.choice(len(slices), size=n_val, replace=False)):
            index, z = slices[k]
            pair = prepared[index]
            pair.val_slices.append(z)
            pair.val_mask[z] = pair.train_mask[z]
            pair.train_mask[z] = False
    else:
        for pair in prepared:
            pair.val_mask = pair.train_mask
            pair.val_slices = [int(z) for z in np.flatnonzero(pair.train_mask.any(axis=(1, 2)))]
            del pair.val_slices[MAX_VALIDATION_SLICES:]
    label_names = {v: names[v] for v in [0, *sorted(classes)] if v in names}
    return TrainingData(prepared, sorted(classes), label_names, held_out)


def _subsample(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(coords) <= MAX_CENTRES:
        return coords
    return coords[rng.choice(len(coords), size=MAX_CENTRES, replace=False)]


class PatchSampler:
    """Draws training patches centred near annotated voxels.

    Half the patches are centred on a voxel of a foreground class (each class
    equally likely, so small structures are seen as often as big ones), the
    rest on any annotated voxel, so the background is learnt too. A slice
    model (``spatial_dims`` 2) gets ``2 * context + 1`` neighbouring slices as
    channels, clamped at the volume's ends.
    """

    def __init__(
        self,
        data: TrainingData,
        patch_size: tuple[int, int, int],
        spatial_dims: int,
        context: int,
        rng: np.random.Generator,
    ) -> None:
        self.data = data
        self.patch = tuple(1 if spatial_dims == 2 else p for p in patch_size[:1]) + tuple(
            patch_size[1:]
        )
        self.spatial_dims = spatial_dims
        self.context = context
        self.rng = rng
        self.images, self.targets, self.masks = [], [], []
        annotated, by_class = [], {c: [] for c in data.classes}
        for index, pair in enumerate(data.pairs):
            pad = [(0, max(0, p - s)) for p, s in zip(self.patch, pair.image.shape)]
            self.images.append(np.pad(pair.image, pad))
            self.targets.append(np.pad(pair.target, pad))
            self.masks.append(np.pad(pair.train_mask, pad))
            coords = np.argwhere(pair.train_mask)
            labels = pair.target[pair.train_mask]
            tagged = np.column_stack([np.full(len(coords), index), coords])
            annotated.append(_subsample(tagged, rng))
            for c in data.classes:
                by_class[c].append(_subsample(tagged[labels == c], rng))
        self.annotated = np.concatenate(annotated)
        self.by_class = [np.concatenate(v) for v in by_class.values()]
        self.by_class = [v for v in self.by_class if len(v)]
        if not len(self.annotated):
            raise TrainingDataError("every annotated slice was held out for validation")

    def _centre(self) -> np.ndarray:
        if self.by_class and self.rng.random() < 0.5:
            pool = self.by_class[self.rng.integers(len(self.by_class))]
        else:
            pool = self.annotated
        return pool[self.rng.integers(len(pool))]

    def _corner(self, centre: int, size: int, extent: int) -> int:
        """A window start so the window of ``size`` holds ``centre`` and fits in ``extent``."""
        return int(np.clip(centre - self.rng.integers(size), 0, extent - size))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (B, C, *S) float32, target (B, *S) int64, mask (B, *S) bool)."""
        images, targets, masks = [], [], []
        for _ in range(size):
            index, z, y, x = (int(v) for v in self._centre())
            image, target, mask = self.images[index], self.targets[index], self.masks[index]
            y0 = self._corner(y, self.patch[1], image.shape[1])
            x0 = self._corner(x, self.patch[2], image.shape[2])
            window = (slice(y0, y0 + self.patch[1]), slice(x0, x0 + self.patch[2]))
            if self.spatial_dims == 2:
                zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, len(image) - 1)
                images.append(image[(zs, *window)])
                targets.append(target[(z, *window)])
                masks.append(mask[(z, *window)])
            else:
                z0 = self._corner(z, self.patch[0], image.shape[0])
                block = (slice(z0, z0 + self.patch[0]), *window)
                images.append(image[block][None])
                targets.append(target[block])
                masks.append(mask[block])
        return (
            torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(targets)),
            torch.from_numpy(np.stack(masks)),
        )


class Augmenter:
    """Random affine (one MONAI ``AffineTransform`` call per batch), elastic and intensity changes.

    Rotation is in-plane only (about z): the slices keep their thickness. No
    flips: left and right differ in anatomy and the model should learn which
    side an organ is on. ``strengths`` scale each range (see
    :class:`AugmentStrengths`); elastic warping (MONAI ``Warp`` with a smooth
    random in-plane displacement) runs only when its strength is above 0.
    """

    #: In-plane rotation (radians), overall scale, per-axis stretch on top of it,
    #: and shift as a fraction of the patch, each drawn uniformly per sample.
    ROTATION = math.pi / 9
    SCALE = (0.75, 1.25)
    STRETCH = (0.85, 1.15)
    SHIFT = 0.05
    #: Elastic displacement (pixels, at strength 1) on a coarse grid of this many nodes per axis.
    ELASTIC_PIXELS = 4.0
    ELASTIC_NODES = 5

    def __init__(
        self,
        spatial_dims: int,
        seed: int,
        probability: float = 0.8,
        strengths: AugmentStrengths | None = None,
    ) -> None:
        self.spatial_dims = spatial_dims
        self.probability = probability
        self.strengths = strengths or AugmentStrengths()
        self.generator = torch.Generator().manual_seed(seed)
        self.warp_image = AffineTransform(zero_centered=True, mode="bilinear")
        self.warp_labels = AffineTransform(zero_centered=True, mode="nearest")
        with warnings.catch_warnings():  # Warp notes that it uses torch's grid_sample
            warnings.simplefilter("ignore", UserWarning)
            self.elastic_image = Warp(mode="bilinear", padding_mode="zeros")
            self.elastic_labels = Warp(mode="nearest", padding_mode="zeros")
        a, i = self.strengths.affine, self.strengths.intensity
        self.rotation = self.ROTATION * a
        self.scale = (1 - (1 - self.SCALE[0]) * a, 1 + (self.SCALE[1] - 1) * a)
        self.stretch = (1 - (1 - self.STRETCH[0]) * a, 1 + (self.STRETCH[1] - 1) * a)
        self.shift = self.SHIFT * a
        self.intensity = Compose(
            [
                RandScaleIntensity(factors=0.1 * i, prob=0.5),
                RandShiftIntensity(offsets=0.1 * i, prob=0.5),
                RandGaussianNoise(prob=0.3, std=0.03 * self.strengths.noise),
            ]
        )
        self.intensity.set_random_state(seed)

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.generator)

    def _matrices(self, size: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, d+1, d+1) pull matrices in index order: rotate, scale, shift."""
        d = self.spatial_dims
        angle = self._uniform(-self.rotation, self.rotation, size)
        scale = self._uniform(*self.scale, size, 1) * self._uniform(*self.stretch, size, d)
        shift = self._uniform(-self.shift, self.shift, size, d) * torch.tensor(shape).float()
        theta = torch.eye(d + 1).repeat(size, 1, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, d - 2, d - 2], theta[:, d - 2, d - 1] = cos, -sin
        theta[:, d - 1, d - 2], theta[:, d - 1, d - 1] = sin, cos
        theta[:, :d, :d] = theta[:, :d, :d] * scale[:, None, :]
        theta[:, :d, d] = shift
        keep = torch.rand(size, generator=self.generator) >= self.probability
        theta[keep] = torch.eye(d + 1)
        return theta

    def images(self, image: torch.Tensor) -> torch.Tensor:
        """Augment an image batch alone (classification has no label map to warp along)."""
        image = self.warp_image(image, self._matrices(len(image), tuple(image.shape[2:])))
        return torch.stack(
            [convert_to_tensor(self.intensity(sample), track_meta=False) for sample in image]
        )

    def _displacement(self, size: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, d, *shape) smooth random in-plane displacement, in pixels."""
        d = self.spatial_dims
        coarse = self._uniform(-1.0, 1.0, size, d, *([self.ELASTIC_NODES] * d))
        coarse[:, : d - 2] = 0.0  # 3D: no displacement across slices
        mode = "bicubic" if d == 2 else "trilinear"
        field = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
        return field * self.ELASTIC_PIXELS * self.strengths.elastic

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment a batch; warped-in borders are unannotated."""
        theta = self._matrices(len(image), tuple(image.shape[2:]))
        image = self.warp_image(image, theta)
        labels = torch.stack([target.float(), mask.float()], dim=1)
        labels = self.warp_labels(labels, theta)
        if self.strengths.elastic > 0:
            ddf = self._displacement(len(image), tuple(image.shape[2:]))
            image = self.elastic_image(image, ddf)
            labels = self.elastic_labels(labels, ddf)
        image = torch.stack(
            [convert_to_tensor(self.intensity(sample), track_meta=False) for sample in image]
        )
        return image, labels[:, 0].round().long(), labels[:, 1] > 0.5


def preview_augmentations(
    image: np.ndarray, strengths: AugmentStrengths, count: int = 8, seed: int = 0
) -> np.ndarray:
    """``count`` randomly augmented copies (n, y, x) of a 2D slice, in its own units.

    The slice is scaled to [0, 1] by its 0.5-99.5% percentiles (where the
    intensity augmentations act in training), augmented as a batch, and scaled back.
    """
    low, high = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    span = high - low or 1.0
    batch = torch.from_numpy(((np.asarray(image, dtype=np.float32) - low) / span)[None, None])
    batch = batch.repeat(count, 1, 1, 1)
    target = torch.zeros((count, *image.shape), dtype=torch.long)
    augmenter = Augmenter(2, seed, probability=1.0, strengths=strengths)
    augmented, _, _ = augmenter(batch, target, torch.ones_like(target, dtype=torch.bool))
    return augmented[:, 0].numpy() * span + low

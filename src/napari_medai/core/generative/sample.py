"""Sample a generator package: synthetic patches, and label maps to condition them on.

Samples are never patient data: :class:`SyntheticSamples` carries no scan
geometry (only the training pixel spacing, for a sensible display scale) and
its metadata says ``synthetic: True``. Intensities are mapped back to the
scan's units (e.g. Hounsfield units) with the range the generator was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.files import atomic_write, check_can_write, compound_stem, compound_suffix
from napari_medai.core.generative.config import GenerativeError, SyntheticSamples
from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.models import generators
from napari_medai.core.models.card import GENERATION_TASK
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.sources import load_model
from napari_medai.core.training.dataset import Augmenter
from napari_medai.core.volume import LabelMap, Volume, volume_to_sitk

#: Samples generated per forward pass.
SAMPLE_BATCH = 16


def load_generator(source: str | Path) -> LoadedModel:
    """Load a generator package; any other model is refused with the reason."""
    model = load_model(source)
    if model.card.task != GENERATION_TASK:
        raise ModelLoadError(
            f"'{model.name}' is a {model.card.task} model, not an image generator; "
            "pick a package trained with Generate ('napari-medai gan train', card task "
            f"'{GENERATION_TASK}')"
        )
    return model


def is_conditional(model: LoadedModel) -> bool:
    """Whether the generator turns label maps into images."""
    return model.card.architecture == generators.CONDITIONAL


def masks_from_labels(
    labels: LabelMap, count: int, patch: int, seed: int | None = None, deform: bool = True
) -> np.ndarray:
    """``count`` (patch x patch) label maps cut from the labelled axial slices.

    Each crop holds labelled voxels; with ``deform`` it is randomly rotated,
    scaled and elastically warped (the segmentation training's augmentation,
    nearest-neighbour), so the generator is asked for shapes it never saw.
    """
    array = np.asarray(labels.array)
    if not array.any():
        raise GenerativeError("the labels are empty: paint a structure to generate images for")
    _, height, width = array.shape
    if height < patch or width < patch:
        raise GenerativeError(
            f"the label slices are {height}x{width} pixels, smaller than the generator's "
            f"{patch}x{patch} patch"
        )
    rng = np.random.default_rng(seed)
    foreground = np.argwhere(array != 0)
    crops = []
    for _ in range(count):
        z, y, x = foreground[rng.integers(len(foreground))]
        y0 = int(np.clip(y - rng.integers(patch), 0, height - patch))
        x0 = int(np.clip(x - rng.integers(patch), 0, width - patch))
        crops.append(array[z, y0 : y0 + patch, x0 : x0 + patch])
    masks = np.stack(crops).astype(np.int64)
    if deform:
        augmenter = Augmenter(spatial_dims=2, seed=int(rng.integers(2**31)), probability=1.0)
        target = torch.from_numpy(masks)
        image = torch.zeros((count, 1, patch, patch))
        _, warped, _ = augmenter(image, target, torch.ones_like(target, dtype=torch.bool))
        masks = warped.numpy()
    return masks


def _check_masks(model: LoadedModel, masks: np.ndarray | None, count: int) -> np.ndarray | None:
    patch = int(model.card.patch_size[-1])
    if not is_conditional(model):
        return None
    if masks is None:
        raise GenerativeError(
            f"'{model.name}' turns label maps into images: give label maps to sample from"
        )
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != (patch, patch) or len(masks) < count:
        raise GenerativeError(
            f"'{model.name}' needs {count} label maps of {patch}x{patch} pixels, "
            f"got an array of shape {masks.shape}"
        )
    unknown = sorted(set(np.unique(masks).tolist()) - set(model.card.label_names))
    if unknown:
        raise GenerativeError(
            f"the label maps hold values {unknown} the generator was not trained on "
            f"(it knows {sorted(model.card.label_names)})"
        )
    return masks[:count]


def sample_job(
    model: LoadedModel, count: int, masks: np.ndarray | None = None, seed: int | None = None
) -> Job[SyntheticSamples]:
    """Generate ``count`` patches (conditioned on ``masks`` (n, p, p) for a conditional GAN)."""
    if count < 1:
        raise GenerativeError(f"ask for at least one sample, not {count}")
    masks = _check_masks(model, masks, count)
    return _sample(model, count, masks, seed)


def sample_package_job(
    path: Path, count: int, labels: LabelMap | None, deform: bool, seed: int | None = None
) -> Job[SyntheticSamples]:
    """Load the generator at ``path`` and generate ``count`` samples (the worker's whole job).

    A conditional generator is given label maps cut from ``labels`` (randomly
    deformed with ``deform``); an unconditional one ignores them.
    """
    yield Progress(0.0, "loading the generator")
    model = load_generator(path)
    masks = None
    if is_conditional(model):
        if labels is None:
            raise GenerativeError(
                f"'{model.name}' turns label maps into images: pick the labels to sample from"
            )
        masks = masks_from_labels(labels, count, int(model.card.patch_size[-1]), seed, deform)
    return (yield from sample_job(model, count, masks, seed))


def _sample(
    model: LoadedModel, count: int, masks: np.ndarray | None, seed: int | None
) -> Job[SyntheticSamples]:
    card = model.card
    info = card.training
    low, high = info.get("intensity_range", [0.0, 1.0])
    noise = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**31))
    values = sorted(card.label_names)
    network = model.network.eval()
    chunks = []
    for start in range(0, count, SAMPLE_BATCH):
        size = min(SAMPLE_BATCH, count - start)
        if masks is None:
            z = generators.latent(size, int(card.architecture_args["latent_dim"]), noise)
        else:
            part = torch.from_numpy(masks[start : start + size].astype(np.int64))
            z = generators.condition(generators.label_channels(part, values), noise)
        with torch.no_grad():
            out = network(z)[:, 0].float().numpy()
        chunks.append(((out + 1.0) / 2.0).clip(0.0, 1.0) * (high - low) + low)
        yield Progress((start + size) / count, f"generated {start + size} of {count}")
    spacing = tuple(float(s) for s in info.get("pixel_spacing_mm", [1.0, 1.0]))
    metadata = {
        "synthetic": True,
        "generator": card.name,
        "generator_sha256": model.sha256,
        "kind": info.get("kind"),
        "seed": seed,
    }
    names = dict(card.label_names) if masks is not None else {}
    return SyntheticSamples(
        np.concatenate(chunks).astype(np.float32), masks, spacing, names, metadata
    )


def sample_paths(path: Path) -> tuple[Path, Path, Path]:
    """(images, masks, JSON sidecar) file names for samples saved at ``path``."""
    path = Path(path)
    stem, suffix = compound_stem(path), compound_suffix(path) or ".nii.gz"
    return (
        path.with_name(stem + suffix),
        path.with_name(f"{stem}_masks{suffix}"),
        path.with_name(f"{stem}.json"),
    )


def write_samples(samples: SyntheticSamples, path: Path, overwrite: bool = False) -> list[Path]:
    """Save samples as a new stack file (one sample per slice), masks beside it, and a sidecar.

    The stack sits on its own grid (pixel spacing of the training scan, origin
    0, identity direction): never in a patient's coordinates. The image header
    description and the sidecar both say it is synthetic.
    """
    images_path, masks_path, sidecar = sample_paths(path)
    outputs = [images_path, sidecar] + ([masks_path] if samples.masks is not None else [])
    for target in outputs:
        check_can_write(target, overwrite)
    geometry = Geometry(spacing=(1.0, *samples.pixel_spacing_mm))
    written = [_write_stack(Volume(samples.images, geometry), images_path, overwrite)]
    if samples.masks is not None:
        masks = LabelMap(samples.masks.astype(np.uint8), geometry, {}, samples.label_names)
        written.append(_write_stack(masks, masks_path, overwrite))
    text = json.dumps({**samples.metadata, "label_names": samples.label_names}, indent=2)
    written.append(atomic_write(sidecar, lambda tmp: tmp.write_text(text), overwrite))
    return written


def _write_stack(volume: Volume, path: Path, overwrite: bool) -> Path:
    image = volume_to_sitk(volume)
    # ITK writes this note as the NIfTI "descrip" field and a NRRD comment.
    image.SetMetaData("ITK_FileNotes", "synthetic (napari-medai generator)")
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True), overwrite)

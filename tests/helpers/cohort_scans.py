"""Tiny segmentation and classification models and small-scan cohorts for the cohort tests."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk

#: Phantom grids (shape z, y, x; spacing mm): every scan of a cohort on its own grid.
GRIDS = [
    ((24, 64, 64), (6.0, 5.0, 5.0)),
    ((20, 48, 56), (5.0, 6.0, 6.0)),
    ((30, 40, 40), (4.0, 7.0, 7.0)),
    ((16, 56, 48), (8.0, 5.5, 6.5)),
    ((26, 44, 60), (5.5, 6.0, 5.0)),
    ((18, 52, 52), (7.0, 5.0, 5.0)),
    ((22, 60, 44), (6.5, 5.0, 6.0)),
    ((28, 36, 48), (4.5, 8.0, 6.0)),
    ((20, 64, 40), (6.0, 4.5, 7.5)),
    ((24, 42, 42), (5.0, 7.0, 7.0)),
]
#: Small real files (in ../shared/data) that join a cohort when present.
REAL_FILES = [
    "i2nii/mha.mha",
    "pyradiomics/breast1_image.nrrd",
    "pyradiomics/prostate_phantom_subvolume.nrrd",
    "i2nii/DICOM.zip",
]


def save_tiny_model(folder: Path, **card_fields: Any) -> Path:
    """A two-class UNet running at 8 mm in LPS (so every scan is resampled and mapped back).

    ``card_fields`` change the card (a name, the modality it is made for).
    """
    card = ModelCard(
        name="tiny seg",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "organ"},
        patch_size=[16, 16, 16],
        spacing=[8.0, 8.0, 8.0],
        orientation="LPS",
        intensity={"kind": "window", "low": -200.0, "high": 300.0},
    )
    card = replace(card, **card_fields)
    torch.manual_seed(0)
    network = build_network(card)
    final = [m for m in network.modules() if getattr(m, "bias", None) is not None][-1]
    with torch.no_grad():
        final.bias.copy_(torch.tensor([0.0, 0.02]))
    return save_model_package(folder, card, network)


def save_tiny_classifier(folder: Path) -> Path:
    """A two-class 3D DenseNet package (card task: classification)."""
    card = ModelCard(
        name="tiny cls",
        architecture="DenseNet",
        architecture_args={"init_features": 4, "growth_rate": 4, "block_config": [1], "bn_size": 1},
        label_names={0: "normal", 1: "lesion"},
        patch_size=[8, 16, 16],
        spacing=[12.0, 10.0, 10.0],
        task="classification",
        spatial_dims=3,
        intensity={"kind": "window", "low": -160, "high": 240},
    )
    torch.manual_seed(0)
    return save_model_package(folder, card, build_network(card))


def save_slice_classifier(folder: Path) -> Path:
    """A tiny two-class 2D DenseNet package: Run and Evaluate take a second with it."""
    card = ModelCard(
        name="tiny slice classifier",
        architecture="DenseNet",
        architecture_args={"init_features": 4, "growth_rate": 4, "block_config": [1, 1]},
        label_names={0: "other", 1: "spleen"},
        patch_size=[1, 16, 16],
        task="classification",
        spatial_dims=2,
        intensity={"kind": "window", "low": -160, "high": 240},
    )
    torch.manual_seed(0)
    return save_model_package(folder, card, build_network(card))


def write_cohort(
    folder: Path, phantoms: int, real_data: Path | None = None, broken: bool = True
) -> list[Path]:
    """Phantoms on different grids, real files copied from ``real_data``, two broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    real = [real_data / name for name in REAL_FILES] if real_data is not None else []
    for index, (shape, spacing) in enumerate(GRIDS[: phantoms - len(real)]):
        volume, _ = make_phantom(shape=shape, spacing=spacing, seed=index)
        path = folder / f"phantom{index}.nii.gz"
        sitk.WriteImage(volume_to_sitk(volume), str(path))
        paths.append(path)
    for source in real:
        paths.append(Path(shutil.copy(source, folder / source.name)))
    if not broken:
        return paths
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(paths[0].read_bytes()[:300])
    not_an_image = folder / "notes.nrrd"
    not_an_image.write_text("this is a text file, not a scan\n")
    return [*paths, truncated, not_an_image]


def write_manifest(path: Path, scans: list[Path]) -> Path:
    """A CSV manifest with a ``path`` column, paths relative to it."""
    lines = ["path", *(str(scan.relative_to(path.parent)) for scan in scans)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
